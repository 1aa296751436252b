//! TLS for the gRPC listener, following the key ring instead of a
//! configuration captured at start: the client CAs accepted are the
//! environments' published CAs plus the admin CA *now* (so SVIDs from a CA
//! prepared a moment ago pass the handshake, and a retired CA's stop), and
//! the server certificate is the one the key ring renewed last.
//!
//! The handshake only proves a chain to one of those CAs; which CA may vouch
//! for which SPIFFE ID is decided per request in [`super::peer`].

use std::io;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use super::bounded::BoundedListener;
use super::grpc_idle::{Connections, TrackedIo};
use crate::keys::{KeyRing, ServerTls};

/// Handshakes waiting to be served, at most.
const ACCEPTED_QUEUE: usize = 256;

/// The listener's rustls configuration over `keys`.
pub fn server_config(keys: Arc<KeyRing>) -> Result<ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(ClientCas::new(Arc::clone(&keys), provider)))
        .with_cert_resolver(Arc::new(ServerCert {
            keys,
            current: RwLock::new(None),
        }));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Accepts TCP connections on `listener` (which caps how many are open)
/// and completes their TLS handshakes concurrently, each bounded by
/// `handshake_timeout`, yielding the established streams for
/// `Server::serve_with_incoming`; each is closed once idle for `idle`
/// (tracked in `connections`).
pub fn incoming(
    mut listener: BoundedListener,
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
    (connections, idle): (Connections, Duration),
) -> ReceiverStream<Result<TlsStream<TrackedIo>, io::Error>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer, permit) = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            // Closed once idle (see super::grpc_idle).
            let io = connections.track(tcp, peer, idle, permit);
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(io)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Verifies client certificates against the CAs published now.
#[derive(Debug)]
struct ClientCas {
    keys: Arc<KeyRing>,
    provider: Arc<CryptoProvider>,
    current: RwLock<Option<(u64, Arc<dyn ClientCertVerifier>)>>,
}

impl ClientCas {
    fn new(keys: Arc<KeyRing>, provider: Arc<CryptoProvider>) -> Self {
        Self {
            keys,
            provider,
            current: RwLock::new(None),
        }
    }

    /// The WebPKI verifier for the current CAs, rebuilt once per change.
    fn verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        let generation = self.keys.generation();
        if let Ok(slot) = self.current.read()
            && let Some((g, v)) = slot.as_ref()
            && *g == generation
        {
            return Ok(Arc::clone(v));
        }
        let mut roots = RootCertStore::empty();
        for ca in self.keys.client_ca_certs() {
            roots
                .add(ca)
                .map_err(|e| rustls::Error::General(format!("client CA: {e}")))?;
        }
        let verifier: Arc<dyn ClientCertVerifier> = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&self.provider),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| rustls::Error::General(format!("client verifier: {e}")))?;
        if let Ok(mut slot) = self.current.write() {
            *slot = Some((generation, Arc::clone(&verifier)));
        }
        Ok(verifier)
    }
}

impl ClientCertVerifier for ClientCas {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        // Attest and GetJwks are called without a certificate.
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The accepted CAs change; clients present their one certificate
        // whatever the hints say.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verifier()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Serves the broker's current TLS certificate.
#[derive(Debug)]
struct ServerCert {
    keys: Arc<KeyRing>,
    current: RwLock<Option<(Arc<ServerTls>, Arc<CertifiedKey>)>>,
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let tls = self.keys.server_tls();
        if let Ok(slot) = self.current.read()
            && let Some((held, key)) = slot.as_ref()
            && Arc::ptr_eq(held, &tls)
        {
            return Some(Arc::clone(key));
        }
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(tls.key_der.clone()));
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .inspect_err(|e| tracing::error!(error = %e, "the broker's TLS key is unusable"))
            .ok()?;
        let certified = Arc::new(CertifiedKey::new(tls.cert_chain.clone(), signer));
        if let Ok(mut slot) = self.current.write() {
            *slot = Some((tls, Arc::clone(&certified)));
        }
        Some(certified)
    }
}
