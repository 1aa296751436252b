//! The broker client: attest once, then fetch JWTs and renew the
//! certificate over mTLS with the current SVID.

use std::time::Duration;

use credbroker_proto::v1::workload_client::WorkloadClient as Grpc;
use credbroker_proto::v1::{
    AttestRequest, FetchJwtRequest, IdentityRef, IntrospectRequest, IntrospectResponse,
    RenewX509Request, Revocation, WatchRevocationsRequest, introspect_request,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::ClientError;
use crate::evidence::Evidence;
use crate::request::JwtRequest;
use crate::svid::{JwtSvid, TrustBundle, X509Svid};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one RPC may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(30);

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
#[derive(Debug, Clone)]
pub struct Client {
    url: String,
    bundle_pem: Vec<u8>,
    grpc: Grpc<Channel>,
}

fn endpoint(url: &str) -> Result<Endpoint, ClientError> {
    if !url.starts_with("https://") {
        return Err(ClientError::InvalidUrl {
            url: url.to_owned(),
            why: "the broker speaks gRPC over TLS only: use an https:// URL such as \
                  https://127.0.0.1:7443"
                .into(),
        });
    }
    Endpoint::from_shared(url.to_owned())
        .map(|e| e.connect_timeout(CONNECT_TIMEOUT).timeout(RPC_TIMEOUT))
        .map_err(|e| ClientError::InvalidUrl {
            url: url.to_owned(),
            why: e.to_string(),
        })
}

async fn connect(
    url: &str,
    bundle_pem: &[u8],
    identity: Option<Identity>,
) -> Result<Channel, ClientError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(bundle_pem));
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    let connect_err = |source| ClientError::Connect {
        url: url.to_owned(),
        source,
    };
    endpoint(url)?
        .tls_config(tls)
        .map_err(connect_err)?
        .connect()
        .await
        .map_err(connect_err)
}

impl Client {
    /// Connects to `url` (e.g. `https://127.0.0.1:7443`), trusting the CA
    /// certificates in `bundle_pem` (the broker's `broker-ca.pem`).
    pub async fn connect(url: &str, bundle_pem: &[u8]) -> Result<Self, ClientError> {
        let certs: Vec<_> = CertificateDer::pem_slice_iter(bundle_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| ClientError::Bundle(e.to_string()))?;
        if certs.is_empty() {
            return Err(ClientError::Bundle("no PEM certificate found".into()));
        }
        let channel = connect(url, bundle_pem, None).await?;
        Ok(Self {
            url: url.to_owned(),
            bundle_pem: bundle_pem.to_vec(),
            grpc: Grpc::new(channel),
        })
    }

    /// Proves what this workload is and receives its first credentials. A
    /// fresh key pair is generated here; only its CSR is sent.
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
        let response = self
            .grpc
            .clone()
            .attest(AttestRequest {
                evidence: Some(evidence),
                csr,
                expected_identity: expected.map(|(env, name)| IdentityRef {
                    env: env.to_owned(),
                    name: name.to_owned(),
                }),
                jwts: jwts.iter().map(JwtRequest::to_proto).collect(),
            })
            .await?
            .into_inner();
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

    /// A client that presents `svid` as its TLS client certificate.
    pub async fn authenticated(&self, svid: &X509Svid) -> Result<WorkloadClient, ClientError> {
        let identity = Identity::from_pem(svid.cert_chain_pem(), svid.private_key_pem());
        let channel = connect(&self.url, &self.bundle_pem, Some(identity)).await?;
        Ok(WorkloadClient {
            grpc: Grpc::new(channel),
        })
    }

    /// A client without a client certificate, for probing (calls that need
    /// an SVID will be refused with UNAUTHENTICATED).
    pub fn anonymous(&self) -> WorkloadClient {
        WorkloadClient {
            grpc: self.grpc.clone(),
        }
    }
}

/// A connection authenticated with an X.509-SVID.
#[derive(Debug, Clone)]
pub struct WorkloadClient {
    grpc: Grpc<Channel>,
}

impl WorkloadClient {
    /// The underlying generated gRPC client, for calls the SDK does not wrap.
    pub fn grpc(&self) -> Grpc<Channel> {
        self.grpc.clone()
    }

    /// Fetches a JWT-SVID. For an identity that requires binding it is
    /// bound (`cnf.x5t#S256`) to the SVID this client presents; otherwise it
    /// is a bearer token.
    pub async fn fetch_jwt(&self, request: &JwtRequest) -> Result<JwtSvid, ClientError> {
        let response = self
            .grpc
            .clone()
            .fetch_jwt(FetchJwtRequest {
                jwt: Some(request.to_proto()),
            })
            .await?
            .into_inner();
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
            .grpc
            .clone()
            .renew_x509(RenewX509Request { csr })
            .await?
            .into_inner();
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
        Ok(self
            .grpc
            .clone()
            .introspect(IntrospectRequest {
                credential: Some(credential),
                presented_certificate,
            })
            .await?
            .into_inner())
    }

    /// Streams every live revocation after `after_seq`, then each new one.
    /// Reconnect with the last `seq` seen to miss nothing.
    pub async fn watch_revocations(
        &self,
        after_seq: i64,
    ) -> Result<tonic::Streaming<Revocation>, ClientError> {
        let mut grpc = self.grpc.clone();
        Ok(grpc
            .watch_revocations(WatchRevocationsRequest { after_seq })
            .await?
            .into_inner())
    }
}
