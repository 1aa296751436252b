//! Closing gRPC connections that sit idle. Bytes are no measure of idleness
//! here: HTTP/2 keepalive pings flow on an unused connection, and a quiet
//! WatchRevocations stream moves nothing for hours while very much in use.
//! So a connection is idle when no call has started on it for the
//! configured time and it carries no open stream; calls mark their
//! connection (found by its peer address, unique per live TCP connection)
//! as they start, streams for as long as they run.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};

#[derive(Debug, Default)]
struct Activity {
    /// Milliseconds since the registry's epoch when a call last started.
    last_ms: AtomicU64,
    /// Streams open now.
    streams: AtomicUsize,
}

/// Live gRPC connections by peer address, with their activity.
#[derive(Debug, Clone)]
pub struct Connections {
    map: Arc<DashMap<SocketAddr, Arc<Activity>>>,
    epoch: Instant,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            map: Arc::new(DashMap::new()),
            epoch: Instant::now(),
        }
    }
}

impl Connections {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Marks the connection of `peer` as used now (a call started).
    pub fn touch(&self, peer: Option<SocketAddr>) {
        if let Some(a) = peer.and_then(|p| self.map.get(&p)) {
            a.last_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// Marks the connection of `peer` busy until the guard is dropped.
    pub fn stream(&self, peer: Option<SocketAddr>) -> StreamGuard {
        let activity = peer.and_then(|p| self.map.get(&p).map(|a| Arc::clone(&a)));
        if let Some(a) = &activity {
            a.streams.fetch_add(1, Ordering::AcqRel);
        }
        StreamGuard {
            activity,
            connections: self.clone(),
        }
    }

    /// Wraps an accepted connection that is closed once idle for `idle`.
    pub fn track(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        idle: Duration,
        permit: OwnedSemaphorePermit,
    ) -> TrackedIo {
        let activity = Arc::new(Activity::default());
        activity.last_ms.store(self.now_ms(), Ordering::Relaxed);
        self.map.insert(peer, Arc::clone(&activity));
        // Checked twice per period: closed between 1× and 1.5× `idle`.
        let check_every = (idle / 2).max(Duration::from_millis(100));
        TrackedIo {
            inner: stream,
            peer,
            idle,
            check_every,
            check: Box::pin(tokio::time::sleep(check_every)),
            activity,
            connections: self.clone(),
            _permit: permit,
        }
    }
}

/// A stream in progress on some connection.
#[derive(Debug)]
pub struct StreamGuard {
    activity: Option<Arc<Activity>>,
    connections: Connections,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(a) = &self.activity {
            a.last_ms
                .store(self.connections.now_ms(), Ordering::Relaxed);
            a.streams.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A gRPC connection that ends with `TimedOut` once idle.
#[derive(Debug)]
pub struct TrackedIo {
    inner: TcpStream,
    peer: SocketAddr,
    idle: Duration,
    check_every: Duration,
    check: Pin<Box<Sleep>>,
    activity: Arc<Activity>,
    connections: Connections,
    _permit: OwnedSemaphorePermit,
}

impl TrackedIo {
    fn is_idle(&self) -> bool {
        let quiet = self
            .connections
            .now_ms()
            .saturating_sub(self.activity.last_ms.load(Ordering::Relaxed));
        self.activity.streams.load(Ordering::Acquire) == 0
            && Duration::from_millis(quiet) >= self.idle
    }
}

impl Drop for TrackedIo {
    fn drop(&mut self) {
        self.connections
            .map
            .remove_if(&self.peer, |_, a| Arc::ptr_eq(a, &self.activity));
    }
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let ready = Pin::new(&mut self.inner).poll_read(cx, buf);
        if ready.is_pending() {
            // The server always keeps a read pending, so this is where
            // the connection's idleness is checked.
            while self.check.as_mut().poll(cx).is_ready() {
                if self.is_idle() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "gRPC connection idle for {}",
                            humantime::format_duration(self.idle)
                        ),
                    )));
                }
                let next = tokio::time::Instant::now() + self.check_every;
                self.check.as_mut().reset(next);
            }
        }
        ready
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for TrackedIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}
