//! Shared set-up of the fuzz targets.
//!
//! The RPC targets fuzz the real stack in-process: one broker per fuzzing
//! process (`credbroker::start`, loopback, real TLS, a temporary SQLite
//! data directory, rate limits off), an identity attested with a join
//! token, and gRPC channels as the admin, as that workload (mTLS with its
//! SVID) and as nobody. Inputs go out as raw request bodies, so the
//! broker's own decoder sees every byte, then its handlers. A panic in any
//! thread aborts the process (libFuzzer's panic hook): a crash. A call that
//! does not answer within [`CALL_TIMEOUT`] ([`LOG_WALK_TIMEOUT`] for the
//! calls that verify the whole audit log) panics too: a hang.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::{Buf, BufMut};
use credbroker_client::workload_api::WorkloadApi;
use credbroker_client::{
    Client, CredentialSource, Evidence, JwtVerifier, RefreshPolicy, SourceConfig,
};
use credbroker_proto::v1::admin_client::AdminClient;
use credbroker_proto::v1::{CreateIdentityRequest, CreateJoinTokenRequest, IdentityRef};
use tokio::runtime::Runtime;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Request, Status};

/// Longest one fuzzed call may take before it counts as a hang.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The same for calls that walk the whole audit log (verifying it): the
/// log grows with every call of a long run (hundreds of thousands of
/// entries after an hour), so their honest time grows with it.
pub const LOG_WALK_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a call to `path` may take before it counts as a hang.
fn timeout_for(path: &str) -> Duration {
    if path.starts_with("/credbroker.v1.Admin/VerifyAudit") {
        LOG_WALK_TIMEOUT
    } else {
        CALL_TIMEOUT
    }
}
/// The environment and audience the harness's identity uses.
pub const ENV: &str = "dev";
/// Audience of the harness identity's JWTs.
pub const AUDIENCE: &str = "fuzz";

/// One in-process broker and the ways to call it.
pub struct Harness {
    /// Runs the broker and the calls.
    pub rt: Runtime,
    /// Authenticated with the bootstrap admin certificate.
    pub admin: Channel,
    /// Authenticated with the harness workload's SVID.
    pub workload: Channel,
    /// No client certificate.
    pub anonymous: Channel,
    /// The SDK verifier for `dev` / [`AUDIENCE`], keys from the broker.
    pub verifier: JwtVerifier,
    /// A JWT the broker issued to the harness workload.
    pub jwt: String,
    /// The agent's SPIFFE Workload API, built once as an agent does: one
    /// per process, its validators and revocation stream shared by every
    /// call (one per input leaked a revocation stream each and ended in a
    /// harness hang once the connection's streams ran out).
    pub workload_api: WorkloadApi,
    /// What the Workload API serves (kept refreshing for the whole run).
    pub source: CredentialSource,
    _running: credbroker::RunningBroker,
    _dir: tempfile::TempDir,
}

/// The process's harness, started on first use.
pub fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| start().expect("starting the fuzzing broker"))
}

async fn channel(url: &str, ca: &[u8], identity: Option<Identity>) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Channel::from_shared(url.to_owned())
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())
}

fn start() -> Result<Harness, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let config = credbroker::Config {
        data_dir: dir.path().to_path_buf(),
        grpc_listen: ([127, 0, 0, 1], 0).into(),
        http_listen: ([127, 0, 0, 1], 0).into(),
        rate_limits: credbroker::config::RateLimitsConfig {
            attest_per_second_per_peer: 0,
            sign_per_second_per_peer: 0,
            sign_per_second_per_identity: 0,
        },
        ..credbroker::Config::default()
    };
    let running = rt
        .block_on(credbroker::start(config))
        .map_err(|e| e.to_string())?;
    let url = format!("https://{}", running.grpc_addr);
    let parts = rt.block_on(connect(&url, dir.path()))?;
    Ok(Harness {
        rt,
        admin: parts.admin,
        workload: parts.workload,
        anonymous: parts.anonymous,
        verifier: parts.verifier,
        jwt: parts.jwt,
        workload_api: WorkloadApi::new(&parts.source, parts.client),
        source: parts.source,
        _running: running,
        _dir: dir,
    })
}

struct Parts {
    admin: Channel,
    workload: Channel,
    anonymous: Channel,
    verifier: JwtVerifier,
    jwt: String,
    source: CredentialSource,
    client: Client,
}

/// Registers `name` (audience [`AUDIENCE`]) through the Admin API.
async fn register(admin: &mut AdminClient<Channel>, name: &str) -> Result<(), String> {
    admin
        .create_identity(CreateIdentityRequest {
            env: ENV.to_owned(),
            name: name.to_owned(),
            owner: "fuzz".to_owned(),
            purpose: "fuzzing".to_owned(),
            audiences: vec![AUDIENCE.to_owned()],
            ..CreateIdentityRequest::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// A fresh join token for `name`.
async fn join_token(admin: &mut AdminClient<Channel>, name: &str) -> Result<String, String> {
    Ok(admin
        .create_join_token(CreateJoinTokenRequest {
            identity: Some(IdentityRef {
                env: ENV.to_owned(),
                name: name.to_owned(),
            }),
            ..CreateJoinTokenRequest::default()
        })
        .await
        .map_err(|e| e.to_string())?
        .into_inner()
        .token)
}

async fn connect(url: &str, data_dir: &Path) -> Result<Parts, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let bundle = std::fs::read(data_dir.join("broker-ca.pem")).map_err(|x| e(&x))?;
    let admin_files = credbroker::keys::AdminFiles::locate(data_dir);
    let admin_identity = Identity::from_pem(
        std::fs::read(&admin_files.cert).map_err(|x| e(&x))?,
        std::fs::read(&admin_files.key).map_err(|x| e(&x))?,
    );
    let admin_channel = channel(url, &bundle, Some(admin_identity)).await?;
    let mut admin = AdminClient::new(admin_channel.clone());
    register(&mut admin, "fuzz").await?;
    register(&mut admin, "fuzz-source").await?;
    let client = Client::connect(url, &bundle).await.map_err(|x| e(&x))?;
    let token = join_token(&mut admin, "fuzz").await?;
    let attested = client
        .attest(
            &Evidence::JoinToken(token),
            &[credbroker_client::JwtRequest::audience(AUDIENCE)],
        )
        .await
        .map_err(|x| e(&x))?;
    let jwt = attested
        .jwts
        .first()
        .map(|j| j.token.clone())
        .ok_or("no JWT at attestation")?;
    let svid = &attested.svid;
    let workload = channel(
        url,
        &bundle,
        Some(Identity::from_pem(
            svid.cert_chain_pem(),
            svid.private_key_pem(),
        )),
    )
    .await?;
    let anonymous = channel(url, &bundle, None).await?;
    let verifier = JwtVerifier::new(&client, ENV, AUDIENCE)
        .await
        .map_err(|x| e(&x))?;
    let source = CredentialSource::start(SourceConfig {
        broker: url.to_owned(),
        bundle_pem: bundle,
        evidence: Evidence::JoinToken(join_token(&mut admin, "fuzz-source").await?),
        jwt_audiences: vec![AUDIENCE.to_owned()],
        policy: RefreshPolicy::default(),
    });
    source.ready().await.map_err(|x| e(&x))?;
    Ok(Parts {
        admin: admin_channel,
        workload,
        anonymous,
        verifier,
        jwt,
        source,
        client,
    })
}

/// Sends request bodies as they are, so the server's decoder sees exactly
/// the fuzzer's bytes; answers come back undecoded.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

/// How a method is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One request, one answer.
    Unary,
    /// One request, a stream of answers (the first is awaited).
    ServerStream,
    /// A stream of requests (one is sent), one answer.
    ClientStream,
}

/// Calls `path` on `channel` with `body`; panics (a hang) if it does not
/// answer within [`CALL_TIMEOUT`]. Errors are the expected answer to most
/// inputs and are ignored.
pub fn call(h: &Harness, channel: &Channel, path: &'static str, kind: Kind, body: Vec<u8>) {
    h.rt.block_on(async {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        let name = path;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
        let work = async {
            if grpc.ready().await.is_err() {
                return;
            }
            match kind {
                Kind::Unary => {
                    let _ = grpc.unary(Request::new(body), path, RawCodec).await;
                }
                Kind::ServerStream => {
                    if let Ok(response) = grpc
                        .server_streaming(Request::new(body), path, RawCodec)
                        .await
                    {
                        let mut stream = response.into_inner();
                        // The first item or the end; a live stream may
                        // legitimately stay open, so only the first is awaited.
                        let _ = tokio::time::timeout(Duration::from_millis(200), stream.message())
                            .await;
                    }
                }
                Kind::ClientStream => {
                    let requests = tokio_stream_once(body);
                    let _ = grpc
                        .client_streaming(Request::new(requests), path, RawCodec)
                        .await;
                }
            }
        };
        let limit = timeout_for(name);
        if tokio::time::timeout(limit, work).await.is_err() {
            panic!("{name} did not answer within {limit:?}");
        }
    });
}

fn tokio_stream_once(body: Vec<u8>) -> impl tokio_stream::Stream<Item = Vec<u8>> + Send + 'static {
    tokio_stream::iter([body])
}

/// Picks one of `methods` by the first byte of `data`; the rest is the body.
pub fn pick<'a, T: Copy>(methods: &'a [T], data: &'a [u8]) -> Option<(T, &'a [u8])> {
    let (&first, rest) = data.split_first()?;
    Some((methods[usize::from(first) % methods.len()], rest))
}
