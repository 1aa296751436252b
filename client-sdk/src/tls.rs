//! rustls configurations that follow a [`CredentialSource`]: the
//! certificate presented and the trust roots used are read from the source
//! on every handshake, so mTLS between workloads keeps working across
//! rotations without a restart.
//!
//! Peers are authenticated the SPIFFE way: the chain must lead to the
//! current trust bundle, and the peer is identified by the SPIFFE ID in its
//! URI SAN (never by DNS name), which must be allowed by [`AllowedPeers`]
//! and, when a [`RevocationWatcher`] is given, not revoked.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{
    CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, Error, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::sync::watch;

use crate::revocations::RevocationWatcher;
use crate::source::{CredentialSource, SourceState, usable};

/// Which peers a TLS endpoint accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedPeers {
    /// Any SPIFFE ID of the source's own trust domain.
    TrustDomain,
    /// Exactly these SPIFFE IDs.
    Only(Vec<String>),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// Presents the source's current SVID, re-reading it on every handshake
/// and rebuilding the signing key only when the SVID changes.
#[derive(Debug)]
struct SvidResolver {
    state: watch::Receiver<SourceState>,
    cached: Mutex<Option<(String, Arc<CertifiedKey>)>>,
}

impl SvidResolver {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let creds = usable(&self.state.borrow()).ok()?;
        let mut cached = self.cached.lock().ok()?;
        if let Some((serial, key)) = cached.as_ref()
            && *serial == creds.svid.serial
        {
            return Some(Arc::clone(key));
        }
        let signing = rustls::crypto::ring::sign::any_supported_type(&PrivateKeyDer::Pkcs8(
            creds.svid.private_key.clone_key(),
        ))
        .ok()?;
        let key = Arc::new(CertifiedKey::new(creds.svid.cert_chain.clone(), signing));
        *cached = Some((creds.svid.serial.clone(), Arc::clone(&key)));
        Some(key)
    }
}

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for SvidResolver {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies peers against the source's current bundle and the SPIFFE ID
/// rules; serves as both server and client certificate verifier.
#[derive(Debug)]
struct SpiffeVerifier {
    state: watch::Receiver<SourceState>,
    peers: AllowedPeers,
    revocations: Option<RevocationWatcher>,
    /// Trust roots built from the last bundle seen; rebuilt only when the
    /// bundle changes, not on every handshake.
    roots: Mutex<Option<(Vec<CertificateDer<'static>>, Arc<RootCertStore>)>>,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::General(msg.into())
}

impl SpiffeVerifier {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), Error> {
        let creds = usable(&self.state.borrow())
            .map_err(|e| invalid(format!("no local credentials to verify with: {e}")))?;
        let roots = self.roots(&creds.bundle.certs)?;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            intermediates,
            now,
            algorithms().all,
        )?;
        let own_td = creds
            .svid
            .spiffe_id
            .strip_prefix("spiffe://")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default()
            .to_owned();
        let peer_id = spiffe_id(end_entity)?;
        let allowed = match &self.peers {
            AllowedPeers::TrustDomain => peer_id.starts_with(&format!("spiffe://{own_td}/")),
            AllowedPeers::Only(ids) => ids.contains(&peer_id),
        };
        if !allowed {
            return Err(invalid(format!("peer {peer_id} is not allowed")));
        }
        if let Some(watcher) = &self.revocations
            && let Some(reason) =
                watcher.certificate_revoked(end_entity, &creds.identity.0, &own_td)
        {
            return Err(invalid(format!("peer certificate revoked: {reason}")));
        }
        Ok(())
    }
}

impl SpiffeVerifier {
    fn new(
        state: watch::Receiver<SourceState>,
        peers: AllowedPeers,
        revocations: Option<RevocationWatcher>,
    ) -> Self {
        Self {
            state,
            peers,
            revocations,
            roots: Mutex::new(None),
        }
    }

    fn roots(&self, bundle: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, Error> {
        let mut cached = self
            .roots
            .lock()
            .map_err(|_| invalid("trust root cache poisoned"))?;
        if let Some((certs, roots)) = cached.as_ref()
            && certs.as_slice() == bundle
        {
            return Ok(Arc::clone(roots));
        }
        let mut roots = RootCertStore::empty();
        for ca in bundle {
            roots.add(ca.clone())?;
        }
        let roots = Arc::new(roots);
        *cached = Some((bundle.to_vec(), Arc::clone(&roots)));
        Ok(roots)
    }
}

/// The single SPIFFE ID of a certificate.
pub fn spiffe_id(cert: &[u8]) -> Result<String, Error> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|_| invalid("peer certificate cannot be parsed"))?;
    let uris: Vec<String> = crate::uri_sans(&parsed)
        .into_iter()
        .filter(|u| u.starts_with("spiffe://"))
        .map(str::to_owned)
        .collect();
    match uris.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(invalid("peer certificate must carry exactly one SPIFFE ID")),
    }
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.verify(end_entity, intermediates, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

impl ClientCertVerifier for SpiffeVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.verify(end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// A server config requiring client SVIDs, presenting the source's SVID.
pub fn server_config(
    source: &CredentialSource,
    peers: AllowedPeers,
    revocations: Option<RevocationWatcher>,
) -> Result<ServerConfig, Error> {
    let verifier = SpiffeVerifier::new(source.watch(), peers, revocations);
    let resolver = SvidResolver {
        state: source.watch(),
        cached: Mutex::new(None),
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(resolver));
    // A resumed session skips certificate verification: it could outlive a
    // rotated, expired or revoked SVID. Every connection verifies afresh.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// A client config presenting the source's SVID and accepting servers by
/// SPIFFE ID (the TLS server name is ignored).
pub fn client_config(
    source: &CredentialSource,
    peers: AllowedPeers,
    revocations: Option<RevocationWatcher>,
) -> Result<ClientConfig, Error> {
    let verifier = SpiffeVerifier::new(source.watch(), peers, revocations);
    let resolver = SvidResolver {
        state: source.watch(),
        cached: Mutex::new(None),
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(resolver));
    // See `server_config`: no resumption past a rotation or revocation.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}
