//! Two services talking mTLS with X.509-SVIDs that rotate while requests
//! keep flowing.
//!
//! Each side runs a [`CredentialSource`]: it attests once with a join token
//! (its private key is generated in this process and never leaves it), then
//! renews its SVID at about half of its lifetime. The SDK's rustls
//! configurations ([`server_config`], [`client_config`]) read the source on
//! every handshake, so each new connection presents the current certificate
//! and trusts the current bundle: nothing is reloaded or restarted. Peers are
//! identified by SPIFFE ID, never by host name; the server accepts only the
//! client's ID and the client only the server's.
//!
//! The client opens a new connection for every request, so every request
//! goes through a handshake with whatever certificates are current at that
//! moment. Each side reports the serial of the certificate its peer
//! presented, which is how rotations show up here.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use credbroker_client::tls::{AllowedPeers, client_config, server_config, spiffe_id};
use credbroker_client::{CredentialSource, Evidence, RefreshPolicy, SourceConfig};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, MissedTickBehavior, timeout};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::broker::{Admin, Broker, Registration};
use crate::serial_of;

/// Name of the serving identity.
pub const SERVER: &str = "example-server";
/// Name of the calling identity.
pub const CLIENT: &str = "example-client";
/// Longest one request may take before it counts as an error.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a source may take to deliver its first credentials.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the running count is printed.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// How the example runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Lifetime of both identities' X.509-SVIDs, set when they are
    /// registered (an identity that already exists keeps its own).
    pub x509_ttl: Duration,
    /// How long requests are sent.
    pub duration: Duration,
    /// Time between two requests.
    pub interval: Duration,
}

/// What happened while requests were flowing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Requests sent.
    pub requests: u64,
    /// Requests that failed (handshake, I/O, timeout or wrong answer).
    pub errors: u64,
    /// Times the client saw the server present a new certificate.
    pub server_rotations: u32,
    /// Times the server saw the client present a new certificate.
    pub client_rotations: u32,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} requests, {} errors; server certificate rotated {} times, client certificate {} times",
            self.requests, self.errors, self.server_rotations, self.client_rotations
        )
    }
}

/// Registers the two identities (or reuses them), starts the server and the
/// client in this process, and sends a request every `interval` for
/// `duration`, printing each rotation and a running count.
pub async fn run(broker: &Broker, options: &Options) -> Result<Report> {
    let mut admin = broker.admin().await?;
    let server = source(broker, &mut admin, SERVER, "answers requests", options).await?;
    let client = source(broker, &mut admin, CLIENT, "calls example-server", options).await?;
    let server_id = ready(&server, SERVER).await?;
    let client_id = ready(&client, CLIENT).await?;

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let only = |id: &String| AllowedPeers::Only(vec![id.clone()]);
    let acceptor = TlsAcceptor::from(Arc::new(server_config(&server, only(&client_id), None)?));
    let connector = TlsConnector::from(Arc::new(client_config(&client, only(&server_id), None)?));
    let serving = tokio::spawn(serve(listener, acceptor));
    println!(
        "{server_id} listens on {addr}; {client_id} calls it every {:?} for {:?}",
        options.interval, options.duration
    );

    let mut report = Report::default();
    let (mut server_serial, mut client_serial) = (None, None);
    let started = Instant::now();
    let mut next_status = STATUS_EVERY;
    let mut ticker = tokio::time::interval(options.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while started.elapsed() < options.duration {
        ticker.tick().await;
        let at = started.elapsed().as_secs_f64();
        report.requests += 1;
        let exchange = match timeout(CALL_TIMEOUT, call(addr, &connector)).await {
            Ok(Ok(exchange)) if exchange.client_id == client_id => exchange,
            Ok(Ok(exchange)) => {
                report.errors += 1;
                println!("[{at:6.1}s] server saw {} instead", exchange.client_id);
                continue;
            }
            Ok(Err(e)) => {
                report.errors += 1;
                println!("[{at:6.1}s] request {} failed: {e:#}", report.requests);
                continue;
            }
            Err(_) => {
                report.errors += 1;
                println!("[{at:6.1}s] request {} timed out", report.requests);
                continue;
            }
        };
        if rotated("server", &mut server_serial, exchange.server_serial, at) {
            report.server_rotations += 1;
        }
        if rotated("client", &mut client_serial, exchange.client_serial, at) {
            report.client_rotations += 1;
        }
        if started.elapsed() >= next_status {
            println!("[{at:6.1}s] {report}");
            next_status += STATUS_EVERY;
        }
    }
    serving.abort();
    Ok(report)
}

/// Registers `name` and starts a credential source attesting with a fresh
/// join token for it.
async fn source(
    broker: &Broker,
    admin: &mut Admin,
    name: &str,
    purpose: &str,
    options: &Options,
) -> Result<CredentialSource> {
    admin
        .register(&Registration {
            name,
            purpose: &format!("mtls_pair example: {purpose}"),
            audiences: &[],
            x509_ttl: Some(options.x509_ttl),
        })
        .await?;
    let token = admin.join_token(name).await?;
    Ok(CredentialSource::start(SourceConfig {
        broker: broker.url.clone(),
        bundle_pem: broker.bundle_pem.clone(),
        evidence: Evidence::JoinToken(token),
        jwt_audiences: Vec::new(),
        policy: RefreshPolicy::default(),
    }))
}

/// Waits for the first credentials of `source`; returns its SPIFFE ID.
async fn ready(source: &CredentialSource, name: &str) -> Result<String> {
    let creds = timeout(READY_TIMEOUT, source.ready())
        .await
        .map_err(|_| anyhow!("{name} got no credentials within {READY_TIMEOUT:?}"))?
        .with_context(|| format!("{name}'s credentials"))?;
    let svid = &creds.svid;
    println!(
        "{} attested: serial {}, expires in {:.1}s",
        svid.spiffe_id,
        svid.serial,
        svid.remaining().as_secs_f64()
    );
    Ok(svid.spiffe_id.clone())
}

/// Records `serial` as the `who` certificate last seen; prints and returns
/// `true` when it differs from the one seen before.
fn rotated(who: &str, last: &mut Option<String>, serial: String, at: f64) -> bool {
    let changed = match last.as_deref() {
        Some(previous) if previous != serial => {
            println!("[{at:6.1}s] {who} certificate rotated: serial {previous} -> {serial}");
            true
        }
        Some(_) => false,
        None => {
            println!("[{at:6.1}s] {who} certificate: serial {serial}");
            false
        }
    };
    *last = Some(serial);
    changed
}

/// The serial of the certificate a TLS peer presented.
fn peer_serial(peer: Option<&[rustls_pki_types::CertificateDer<'_>]>) -> Result<String> {
    let leaf = peer
        .and_then(<[_]>::first)
        .context("the peer presented no certificate")?;
    serial_of(leaf)
}

/// Accepts connections; answers one line per connection with the caller's
/// SPIFFE ID and certificate serial.
async fn serve(listener: TcpListener, acceptor: TlsAcceptor) {
    while let Ok((tcp, _)) = listener.accept().await {
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let answer = async {
                let mut tls = acceptor.accept(tcp).await.context("TLS handshake")?;
                let peer = tls.get_ref().1.peer_certificates();
                let id = spiffe_id(peer.and_then(<[_]>::first).context("no certificate")?)?;
                let serial = peer_serial(peer)?;
                let (read, mut write) = tokio::io::split(&mut tls);
                BufReader::new(read).read_line(&mut String::new()).await?;
                write
                    .write_all(format!("{id} {serial}\n").as_bytes())
                    .await?;
                write.shutdown().await?;
                anyhow::Ok(())
            };
            if let Err(e) = answer.await {
                eprintln!("server: {e:#}");
            }
        });
    }
}

/// One request, and who each side saw at the other end.
struct Exchange {
    server_serial: String,
    client_id: String,
    client_serial: String,
}

/// Connects to the server, sends one request and reads the answer.
async fn call(addr: SocketAddr, connector: &TlsConnector) -> Result<Exchange> {
    let tcp = TcpStream::connect(addr).await.context("connecting")?;
    // Ignored by the SDK's verifier, which checks the SPIFFE ID instead.
    let name = ServerName::try_from("example-server.invalid")?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    let server_serial = peer_serial(tls.get_ref().1.peer_certificates())?;
    tls.write_all(b"hello\n").await.context("sending")?;
    let mut reply = String::new();
    BufReader::new(tls)
        .read_line(&mut reply)
        .await
        .context("reading the answer")?;
    let (client_id, client_serial) = reply
        .trim()
        .split_once(' ')
        .with_context(|| format!("unexpected answer {reply:?}"))?;
    ensure!(!client_serial.is_empty(), "unexpected answer {reply:?}");
    Ok(Exchange {
        server_serial,
        client_id: client_id.to_owned(),
        client_serial: client_serial.to_owned(),
    })
}
