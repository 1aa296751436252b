//! The SPIFFE Workload API served on a Unix socket from a
//! [`CredentialSource`], so existing SPIFFE clients (Envoy, go-spiffe,
//! py-spiffe, the `spiffe` crate) get and follow credbroker SVIDs unchanged.
//!
//! Every call must carry the `workload.spiffe.io: true` metadata
//! (InvalidArgument otherwise). Streams send the full state on every change;
//! when the source has no valid credentials (expired during an outage,
//! revoked) the stream ends with an error instead of leaving the client with
//! a dead SVID.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use credbroker_proto::spiffe::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use credbroker_proto::spiffe::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svid, X509svidRequest, X509svidResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::client::{Client, WorkloadClient};
use crate::request::JwtRequest;
use crate::source::{CredentialSource, Credentials, SourceError, SourceState, usable};
use crate::uds::streams::{Slotted, StreamSlots};
use crate::uds::{AllowedPeers, PeerCred, SocketOptions, UdsListener};

mod validators;
pub(crate) use validators::Validators;

/// Metadata every Workload API call must carry.
const SECURITY_HEADER: &str = "workload.spiffe.io";
/// Largest Workload API request accepted (tonic's default is 4 MiB; the
/// biggest real one, ValidateJWTSVID, carries one JWT of a few KiB).
pub(crate) const MAX_REQUEST_BYTES: usize = 64 * 1024;

type Stream<T> = Slotted<ReceiverStream<Result<T, Status>>>;

/// The Workload API over one credential source.
#[derive(Clone)]
pub struct WorkloadApi {
    state: watch::Receiver<SourceState>,
    client: Client,
    session: Arc<Mutex<Option<(String, WorkloadClient)>>>,
    verifiers: Validators,
    allowed: AllowedPeers,
    streams: StreamSlots,
}

/// The JWT bundle of `env` in SPIFFE form (keys marked `use: jwt-svid`),
/// from the broker.
pub(crate) async fn jwt_bundles(client: &Client, env: &str) -> Result<JwtBundlesResponse, Status> {
    let answer = client
        .anonymous()
        .get_jwks(env)
        .await
        .map_err(|e| match e {
            crate::ClientError::Rejected(status) => status,
            other => Status::unavailable(other.to_string()),
        })?;
    let mut jwks: serde_json::Value = serde_json::from_str(&answer.jwks)
        .map_err(|_| Status::internal("broker sent an invalid JWKS"))?;
    if let Some(keys) = jwks["keys"].as_array_mut() {
        for key in keys {
            key["use"] = "jwt-svid".into();
        }
    }
    Ok(JwtBundlesResponse {
        bundles: HashMap::from([(answer.trust_domain, jwks.to_string().into_bytes())]),
    })
}

impl std::fmt::Debug for WorkloadApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkloadApi")
    }
}

/// Refuses calls without `workload.spiffe.io: true` (SPIFFE Workload API
/// spec: the header proves the caller is not a browser or a proxy).
pub(crate) fn check_header<T>(request: &Request<T>) -> Result<(), Status> {
    match request.metadata().get(SECURITY_HEADER).map(|v| v.to_str()) {
        Some(Ok("true")) => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

/// The trust domain of a SPIFFE ID.
pub(crate) fn trust_domain(spiffe_id: &str) -> String {
    spiffe_id
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default()
        .to_owned()
}

/// Certificates as the Workload API carries them: DER, concatenated.
pub(crate) fn concat_der<'a>(
    certs: impl IntoIterator<Item = &'a rustls_pki_types::CertificateDer<'static>>,
) -> Vec<u8> {
    certs
        .into_iter()
        .flat_map(|c| c.as_ref().to_vec())
        .collect()
}

fn unavailable(e: SourceError) -> Status {
    match e {
        SourceError::Unavailable(reason) if reason.contains("revoked") => {
            Status::permission_denied(reason)
        }
        other => Status::unavailable(other.to_string()),
    }
}

fn x509_response(creds: &Credentials) -> X509svidResponse {
    X509svidResponse {
        svids: vec![X509svid {
            spiffe_id: creds.svid.spiffe_id.clone(),
            x509_svid: concat_der(&creds.svid.cert_chain),
            x509_svid_key: creds.svid.private_key.secret_pkcs8_der().to_vec(),
            bundle: concat_der(&creds.bundle.certs),
            hint: String::new(),
        }],
        crl: vec![],
        federated_bundles: HashMap::new(),
    }
}

/// Sends `make(creds)` whenever the source changes in a way `key` notices,
/// until the client goes away; ends with an error when credentials are gone.
fn stream_changes<T: Send + 'static>(
    mut state: watch::Receiver<SourceState>,
    key: fn(&Credentials) -> String,
    make: impl Fn(Arc<Credentials>) -> futures_like::BoxFuture<Result<T, Status>> + Send + 'static,
) -> ReceiverStream<Result<T, Status>> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut last: Option<String> = None;
        loop {
            let current = state.borrow_and_update().clone();
            match usable(&current) {
                Ok(creds) => {
                    let k = key(&creds);
                    if last.as_ref() != Some(&k) {
                        let message = make(creds).await;
                        let failed = message.is_err();
                        if tx.send(message).await.is_err() || failed {
                            return;
                        }
                        last = Some(k);
                    }
                }
                Err(SourceError::NotReady) => {}
                Err(e) => {
                    let _ = tx.send(Err(unavailable(e))).await;
                    return;
                }
            }
            tokio::select! {
                changed = state.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Tiny boxed-future alias so the stream helper can take async builders.
mod futures_like {
    pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;
}

pub(crate) fn json_to_prost(value: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_prost).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o
                .iter()
                .map(|(k, v)| (k.clone(), json_to_prost(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

impl WorkloadApi {
    /// The API over `source`; `client` reaches the broker for JWTs with
    /// other audiences, JWT bundles and validation keys.
    pub fn new(source: &CredentialSource, client: Client) -> Self {
        Self {
            state: source.watch(),
            client,
            session: Arc::new(Mutex::new(None)),
            verifiers: Validators::default(),
            allowed: AllowedPeers::default(),
            streams: StreamSlots::default(),
        }
    }

    /// Serves only callers whose uid or gid `allowed` lists (when it lists
    /// any); others get PermissionDenied on every call.
    pub fn allow_peers(mut self, allowed: AllowedPeers) -> Self {
        self.allowed = allowed;
        self
    }

    /// The entry check of every call, streams included: the caller's peer
    /// credentials must be admitted, and the security header present.
    fn admit<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.allowed.check(request.extensions().get::<PeerCred>())?;
        check_header(request)
    }

    fn current(&self) -> Result<Arc<Credentials>, Status> {
        usable(&self.state.borrow()).map_err(unavailable)
    }

    async fn session(&self, creds: &Credentials) -> Result<WorkloadClient, Status> {
        if let Ok(slot) = self.session.lock()
            && let Some((serial, session)) = slot.as_ref()
            && *serial == creds.svid.serial
        {
            return Ok(session.clone());
        }
        let session = self
            .client
            .authenticated(&creds.svid)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if let Ok(mut slot) = self.session.lock() {
            *slot = Some((creds.svid.serial.clone(), session.clone()));
        }
        Ok(session)
    }

    /// Creates the Unix socket `path` with `options` (see
    /// [`uds::bind`](crate::uds::bind)) and serves on it until `shutdown`
    /// completes.
    pub async fn serve(
        self,
        path: &Path,
        options: &SocketOptions,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), std::io::Error> {
        let listener = crate::uds::bind(path, options)?;
        self.serve_listener(listener, shutdown).await
    }

    /// Serves on an already bound socket until `shutdown` completes (bind
    /// first to report a bad socket path before anything else starts).
    /// Clients may send any `:authority`; see [`crate::uds::authority`].
    pub async fn serve_listener(
        self,
        listener: UdsListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), std::io::Error> {
        tracing::info!(socket = %listener.path().display(), "serving the SPIFFE Workload API");
        tonic::transport::Server::builder()
            .layer(crate::agent::metrics::CallsLayer)
            .add_service(
                SpiffeWorkloadApiServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .serve_with_incoming_shutdown(listener.incoming(), shutdown)
            .await
            .map_err(std::io::Error::other)
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = Stream<X509svidResponse>;
    type FetchX509BundlesStream = Stream<X509BundlesResponse>;
    type FetchJWTBundlesStream = Stream<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        self.admit(&request)?;
        let stream = stream_changes(
            self.state.clone(),
            |c| c.svid.serial.clone(),
            |creds| Box::pin(async move { Ok(x509_response(&creds)) }),
        );
        Ok(Response::new(self.streams.admit(&request, stream)?))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        self.admit(&request)?;
        let stream = stream_changes(
            self.state.clone(),
            |c| c.bundle.to_pem(),
            |creds| {
                Box::pin(async move {
                    Ok(X509BundlesResponse {
                        crl: vec![],
                        bundles: HashMap::from([(
                            trust_domain(&creds.svid.spiffe_id),
                            concat_der(&creds.bundle.certs),
                        )]),
                    })
                })
            },
        );
        Ok(Response::new(self.streams.admit(&request, stream)?))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        self.admit(&request)?;
        let req = request.into_inner();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let creds = self.current()?;
        if !req.spiffe_id.is_empty() && req.spiffe_id != creds.svid.spiffe_id {
            return Err(Status::permission_denied(format!(
                "this workload is {}, not {}",
                creds.svid.spiffe_id, req.spiffe_id
            )));
        }
        let mut wanted = req.audience.clone();
        wanted.sort();
        wanted.dedup();
        // A held JWT for exactly these audiences is fresh by construction.
        let held = creds.jwts.values().find(|j| {
            let mut aud = j.audiences.clone();
            aud.sort();
            aud == wanted && !j.remaining().is_zero()
        });
        let token = match held {
            Some(jwt) => jwt.token.clone(),
            None => {
                let session = self.session(&creds).await?;
                session
                    .fetch_jwt(&JwtRequest {
                        audiences: wanted,
                        ..JwtRequest::default()
                    })
                    .await
                    .map_err(|e| match e.code() {
                        Some(tonic::Code::PermissionDenied) => {
                            Status::permission_denied(e.to_string())
                        }
                        Some(tonic::Code::InvalidArgument) => {
                            Status::invalid_argument(e.to_string())
                        }
                        _ => Status::unavailable(e.to_string()),
                    })?
                    .token
            }
        };
        Ok(Response::new(JwtsvidResponse {
            svids: vec![Jwtsvid {
                spiffe_id: creds.svid.spiffe_id.clone(),
                svid: token,
                hint: String::new(),
            }],
        }))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        self.admit(&request)?;
        let client = self.client.clone();
        // Re-read at every SVID renewal (half its life): JWT keys rotate on
        // the broker, and a prepared key must reach verifiers before it signs.
        let stream = stream_changes(
            self.state.clone(),
            |c| format!("{} {}", c.identity.0, c.svid.serial),
            move |creds| {
                let client = client.clone();
                Box::pin(async move { jwt_bundles(&client, &creds.identity.0).await })
            },
        );
        Ok(Response::new(self.streams.admit(&request, stream)?))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        self.admit(&request)?;
        let creds = self.current()?;
        let answer = self
            .verifiers
            .validate(
                &self.client,
                &creds.identity.0,
                || async { self.session(&creds).await.ok() },
                request.into_inner(),
            )
            .await?;
        Ok(Response::new(answer))
    }
}
