//! The broker client: attest once, then fetch JWTs and renew the
//! certificate over mTLS with the current SVID.

use std::sync::Arc;

use credbroker_proto::v1::workload_client::WorkloadClient as Grpc;
use credbroker_proto::v1::{
    AttestRequest, FetchJwtRequest, GetJwksRequest, GetJwksResponse, IdentityRef,
    IntrospectRequest, IntrospectResponse, RenewX509Request, Revocation, WatchRevocationsRequest,
    introspect_request,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tonic::transport::Channel;

use crate::brokers::Brokers;
use crate::connector::BrokerTls;
use crate::error::ClientError;
use crate::evidence::Evidence;
use crate::failover::{Health, Pool, Retry};
use crate::request::JwtRequest;
use crate::svid::{JwtSvid, TrustBundle, X509Svid};

/// What attestation returns.
#[derive(Debug, Clone)]
pub struct Attestation {
    /// `(env, name)` of the identity attested.
    pub identity: (String, String),
    /// The certificate, with the key made in this process.
    pub svid: X509Svid,
    /// The CAs of the identity's trust domain.
    pub bundle: TrustBundle,
    /// JWTs requested along with attestation.
    pub jwts: Vec<JwtSvid>,
}

/// A key pair generated here and a CSR for it.
pub(crate) fn new_key_and_csr() -> Result<(PrivatePkcs8KeyDer<'static>, Vec<u8>), ClientError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    Ok((
        PrivatePkcs8KeyDer::from(key.serialize_der()),
        csr.der().to_vec(),
    ))
}

/// A connection to the broker, authenticated one way (the broker's TLS
/// certificate against the bundle). Use it to attest; then use
/// [`Client::authenticated`] for calls that need an SVID.
///
/// Given several broker URLs ([`Client::connect_any`], [`Brokers`]) it
/// stays with the first that works and fails over to the next when that
/// one becomes unreachable or unavailable; see [`Brokers`] for the rules.
#[derive(Debug, Clone)]
pub struct Client {
    target: Target,
    pool: Pool,
}

/// Where sessions connect: the broker list, the CAs that vouch for it,
/// and which broker is in use (shared by every session made from one
/// [`Client`], so what one learns the others use).
#[derive(Debug, Clone)]
struct Target {
    brokers: Brokers,
    tls: BrokerTls,
    health: Arc<Health>,
}

impl Target {
    fn current_broker(&self) -> String {
        self.health
            .active()
            .unwrap_or_else(|| self.brokers.urls()[0].clone())
    }

    /// A pool presenting `svid` as the TLS client certificate, starting
    /// with the broker in use.
    async fn session(&self, svid: &X509Svid) -> Result<WorkloadClient, ClientError> {
        let tls = self.tls.with_client_cert(
            svid.cert_chain.clone(),
            PrivateKeyDer::Pkcs8(svid.private_key.clone_key()),
        )?;
        let pool = Pool::open(&self.brokers, &tls, Arc::clone(&self.health)).await?;
        Ok(WorkloadClient {
            pool,
            target: self.clone(),
        })
    }
}

impl Client {
    /// Connects to `url` (e.g. `https://127.0.0.1:7443`), trusting the CA
    /// certificates in `bundle_pem` (the broker's `broker-ca.pem`). `url`
    /// may also list several replicas separated by commas
    /// (`https://a:7443,https://b:7443`), as [`Client::connect_any`] does.
    pub async fn connect(url: &str, bundle_pem: &[u8]) -> Result<Self, ClientError> {
        Self::connect_to(url.parse()?, bundle_pem).await
    }

    /// Connects to the first of `urls` that answers, in order, and fails
    /// over between them afterwards (see [`Brokers`]).
    pub async fn connect_any<S: AsRef<str>>(
        urls: &[S],
        bundle_pem: &[u8],
    ) -> Result<Self, ClientError> {
        Self::connect_to(Brokers::new(urls)?, bundle_pem).await
    }

    /// Connects to `brokers` (a list with its timeouts), trusting the CA
    /// certificates in `bundle_pem`.
    pub async fn connect_to(brokers: Brokers, bundle_pem: &[u8]) -> Result<Self, ClientError> {
        Self::open(Target {
            brokers,
            tls: BrokerTls::new(bundle_pem)?,
            health: Health::new(),
        })
        .await
    }

    async fn open(target: Target) -> Result<Self, ClientError> {
        let pool = Pool::open(&target.brokers, &target.tls, Arc::clone(&target.health)).await?;
        Ok(Self { target, pool })
    }

    /// The brokers this client uses, in order of preference.
    pub fn brokers(&self) -> &Brokers {
        &self.target.brokers
    }

    /// The broker in use now: its URL, followed by the address in
    /// parentheses when its host name has several (`https://broker:7443
    /// (10.0.0.7:7443)`).
    pub fn current_broker(&self) -> String {
        self.target.current_broker()
    }

    /// Proves what this workload is and receives its first credentials. A
    /// fresh key pair is generated here; only its CSR is sent.
    ///
    /// With several brokers the request goes to a second one only if the
    /// first could not be reached at all: once sent, a single-use join
    /// token may have been spent, so a later failure is returned as it is
    /// (and that broker is skipped by the next call for a while).
    pub async fn attest(
        &self,
        evidence: &Evidence,
        jwts: &[JwtRequest],
    ) -> Result<Attestation, ClientError> {
        self.attest_as(evidence, None, jwts).await
    }

    /// Like [`Client::attest`], but refuses evidence bound to any identity
    /// other than `env/name`.
    pub async fn attest_as(
        &self,
        evidence: &Evidence,
        expected: Option<(&str, &str)>,
        jwts: &[JwtRequest],
    ) -> Result<Attestation, ClientError> {
        let (key, csr) = new_key_and_csr()?;
        let evidence = evidence.resolve().await?;
        let request = AttestRequest {
            evidence: Some(evidence),
            csr,
            expected_identity: expected.map(|(env, name)| IdentityRef {
                env: env.to_owned(),
                name: name.to_owned(),
            }),
            jwts: jwts.iter().map(JwtRequest::to_proto).collect(),
        };
        // Evidence may be single use: sent again only to another broker
        // and only if the first never received it.
        let response = self
            .pool
            .call(Retry::UnlessSent, |mut grpc| {
                let request = request.clone();
                async move { Ok(grpc.attest(request).await?.into_inner()) }
            })
            .await?;
        let svid = response
            .svid
            .ok_or_else(|| ClientError::InvalidResponse("attestation returned no SVID".into()))?;
        let identity = response
            .identity
            .map(|i| (i.env, i.name))
            .ok_or_else(|| ClientError::InvalidResponse("attestation named no identity".into()))?;
        Ok(Attestation {
            identity,
            svid: X509Svid::from_proto(svid, key),
            bundle: TrustBundle::from_der(response.trust_bundle),
            jwts: response.jwts.into_iter().map(JwtSvid::from).collect(),
        })
    }

    /// A client that presents `svid` as its TLS client certificate, to
    /// the same brokers (starting with the one in use). It opens its own
    /// connection; once attested, this `Client` (and its connection) can
    /// be dropped: [`WorkloadClient::with_svid`] makes the next session.
    pub async fn authenticated(&self, svid: &X509Svid) -> Result<WorkloadClient, ClientError> {
        self.target.session(svid).await
    }

    /// What this client needs to connect again later, without its
    /// connection or TLS state (the connection closes once every clone of
    /// this client is dropped). A workload that has attested needs only its
    /// SVID session ([`Client::authenticated`]); holding an [`IdleClient`]
    /// for a later attestation instead of a `Client` costs no second
    /// connection.
    pub fn idle(&self) -> IdleClient {
        IdleClient {
            target: self.target.clone(),
        }
    }

    /// A client without a client certificate, for probing (calls that need
    /// an SVID will be refused with UNAUTHENTICATED).
    pub fn anonymous(&self) -> WorkloadClient {
        WorkloadClient {
            pool: self.pool.clone(),
            target: self.target.clone(),
        }
    }
}

/// A [`Client`] put aside ([`Client::idle`]): the brokers, the CAs that
/// vouch for them and what was learnt of which one works, but no
/// connection. [`IdleClient::connect`] makes a `Client` again.
#[derive(Debug, Clone)]
pub struct IdleClient {
    target: Target,
}

impl IdleClient {
    /// Connects again, to the broker that was in use first.
    pub async fn connect(&self) -> Result<Client, ClientError> {
        Client::open(self.target.clone()).await
    }

    /// The broker in use when this client was put aside, or since.
    pub fn current_broker(&self) -> String {
        self.target.current_broker()
    }
}

/// A connection authenticated with an X.509-SVID. Its calls fail over
/// between the brokers of the [`Client`] it came from; all of them are
/// safe to repeat on another broker.
#[derive(Debug, Clone)]
pub struct WorkloadClient {
    pool: Pool,
    target: Target,
}

impl WorkloadClient {
    /// A session to the same brokers presenting `svid` instead (the one a
    /// renewal returned), on a connection of its own; this session's
    /// connection closes when the last clone of it is dropped.
    pub async fn with_svid(&self, svid: &X509Svid) -> Result<WorkloadClient, ClientError> {
        self.target.session(svid).await
    }

    /// The underlying generated gRPC client of the broker in use, for calls
    /// the SDK does not wrap (these do not fail over by themselves).
    pub fn grpc(&self) -> Grpc<Channel> {
        self.pool.grpc()
    }

    /// Runs an idempotent call, failing over between brokers.
    pub(crate) async fn call<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: FnMut(Grpc<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        self.pool.call(Retry::Idempotent, call).await
    }

    /// The JWT signing keys of `env` (anonymous callers may ask).
    pub(crate) async fn get_jwks(&self, env: &str) -> Result<GetJwksResponse, ClientError> {
        self.call(|mut grpc| async move {
            Ok(grpc
                .get_jwks(GetJwksRequest {
                    env: env.to_owned(),
                })
                .await?
                .into_inner())
        })
        .await
    }

    /// Fetches a JWT-SVID. For an identity that requires binding it is
    /// bound (`cnf.x5t#S256`) to the SVID this client presents; otherwise it
    /// is a bearer token.
    pub async fn fetch_jwt(&self, request: &JwtRequest) -> Result<JwtSvid, ClientError> {
        let jwt = request.to_proto();
        let response = self
            .call(|mut grpc| {
                let jwt = jwt.clone();
                async move {
                    Ok(grpc
                        .fetch_jwt(FetchJwtRequest { jwt: Some(jwt) })
                        .await?
                        .into_inner())
                }
            })
            .await?;
        response
            .jwt
            .map(JwtSvid::from)
            .ok_or_else(|| ClientError::InvalidResponse("no JWT in response".into()))
    }

    /// Renews the certificate with a fresh key pair generated here.
    pub async fn renew(&self) -> Result<(X509Svid, TrustBundle), ClientError> {
        let (key, csr) = new_key_and_csr()?;
        self.renew_with_csr(csr, key).await
    }

    /// Renews with a caller-made CSR (for custom key types); `key` is the
    /// CSR's private key, kept in the returned SVID.
    pub async fn renew_with_csr(
        &self,
        csr: Vec<u8>,
        key: PrivatePkcs8KeyDer<'static>,
    ) -> Result<(X509Svid, TrustBundle), ClientError> {
        let response = self
            .call(|mut grpc| {
                let csr = csr.clone();
                async move {
                    Ok(grpc
                        .renew_x509(RenewX509Request { csr })
                        .await?
                        .into_inner())
                }
            })
            .await?;
        let svid = response
            .svid
            .ok_or_else(|| ClientError::InvalidResponse("renewal returned no SVID".into()))?;
        Ok((
            X509Svid::from_proto(svid, key),
            TrustBundle::from_der(response.trust_bundle),
        ))
    }

    /// Asks the broker whether a JWT-SVID is active (RFC 7662 semantics).
    pub async fn introspect_token(&self, token: &str) -> Result<IntrospectResponse, ClientError> {
        self.introspect(introspect_request::Credential::Token(token.to_owned()))
            .await
    }

    /// Asks the broker whether an X.509-SVID leaf (DER) is active.
    pub async fn introspect_certificate(
        &self,
        der: &[u8],
    ) -> Result<IntrospectResponse, ClientError> {
        self.introspect(introspect_request::Credential::Certificate(der.to_vec()))
            .await
    }

    /// Asks whether a JWT-SVID presented with the DER client certificate
    /// `client_cert` is active: a token bound to another certificate is not.
    pub async fn introspect_token_presented(
        &self,
        token: &str,
        client_cert: &[u8],
    ) -> Result<IntrospectResponse, ClientError> {
        self.introspect_with(
            introspect_request::Credential::Token(token.to_owned()),
            client_cert.to_vec(),
        )
        .await
    }

    async fn introspect(
        &self,
        credential: introspect_request::Credential,
    ) -> Result<IntrospectResponse, ClientError> {
        self.introspect_with(credential, Vec::new()).await
    }

    async fn introspect_with(
        &self,
        credential: introspect_request::Credential,
        presented_certificate: Vec<u8>,
    ) -> Result<IntrospectResponse, ClientError> {
        self.call(|mut grpc| {
            let request = IntrospectRequest {
                credential: Some(credential.clone()),
                presented_certificate: presented_certificate.clone(),
            };
            async move { Ok(grpc.introspect(request).await?.into_inner()) }
        })
        .await
    }

    /// Streams every live revocation after `after_seq`, then each new one.
    /// Reconnect with the last `seq` seen to miss nothing (on whichever
    /// broker is up: replicas share one sequence).
    pub async fn watch_revocations(
        &self,
        after_seq: i64,
    ) -> Result<tonic::Streaming<Revocation>, ClientError> {
        self.call(|mut grpc| async move {
            Ok(grpc
                .watch_revocations(WatchRevocationsRequest { after_seq })
                .await?
                .into_inner())
        })
        .await
    }
}
