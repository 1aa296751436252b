//! Connection bounds shared by the gRPC and HTTP listeners: a cap on open
//! connections (a permit per connection; at the cap the listener stops
//! accepting and new connections wait in the kernel's backlog, costing the
//! process no descriptor), an idle timeout at the byte level, and accept
//! failures — above all running out of file descriptors — logged instead of
//! swallowed.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// `[connections]`: bounds on what open connections may cost.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// Most HTTP connections open at once.
    pub http_max_connections: usize,
    /// A request's headers must arrive within this time.
    #[serde(with = "crate::config::humantime_serde_compat")]
    pub http_header_timeout: Duration,
    /// An HTTP connection with no bytes moving for this long is closed.
    #[serde(with = "crate::config::humantime_serde_compat")]
    pub http_idle_timeout: Duration,
    /// Most gRPC (TLS) connections open at once.
    pub grpc_max_connections: usize,
    /// A gRPC connection on which no call has started for this long and no
    /// stream is open is closed (keep it above the longest call, 30 s).
    #[serde(with = "crate::config::humantime_serde_compat")]
    pub grpc_idle_timeout: Duration,
    /// Most WatchRevocations streams one caller (one SPIFFE ID, or the
    /// admin) may hold open at once.
    pub revocation_streams_per_caller: usize,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        Self {
            http_max_connections: 256,
            http_header_timeout: Duration::from_secs(10),
            http_idle_timeout: Duration::from_secs(60),
            grpc_max_connections: 4096,
            grpc_idle_timeout: Duration::from_secs(5 * 60),
            revocation_streams_per_caller: 16,
        }
    }
}

impl ConnectionsConfig {
    /// Checks that every bound is a usable number.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("http_max_connections", self.http_max_connections),
            ("grpc_max_connections", self.grpc_max_connections),
            (
                "revocation_streams_per_caller",
                self.revocation_streams_per_caller,
            ),
        ];
        for (name, v) in positive {
            if v == 0 || v > u32::MAX as usize >> 3 {
                return Err(format!(
                    "connections.{name} = {v} must lie within [1, 536870911]"
                ));
            }
        }
        if self.http_header_timeout.is_zero() || self.http_idle_timeout.is_zero() {
            return Err(
                "connections.http_header_timeout and http_idle_timeout must be positive".into(),
            );
        }
        if self.grpc_idle_timeout < Duration::from_secs(1) {
            return Err("connections.grpc_idle_timeout must be at least 1s".into());
        }
        Ok(())
    }
}

/// Accepts TCP connections, at most `permits` open at once.
#[derive(Debug)]
pub struct BoundedListener {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    what: &'static str,
    last_logged: Option<Instant>,
}

impl BoundedListener {
    /// Caps `listener` (named `what` in logs) at `max` connections.
    pub fn new(listener: TcpListener, max: usize, what: &'static str) -> Self {
        Self {
            listener,
            permits: Arc::new(Semaphore::new(max)),
            what,
            last_logged: None,
        }
    }

    /// The next connection, once one is allowed; its permit is released
    /// when it is dropped.
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    // Without TCP_NODELAY, Nagle plus delayed ACKs stall
                    // every response ~40 ms.
                    let _ = stream.set_nodelay(true);
                    return (stream, peer, permit);
                }
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    // Out of descriptors (EMFILE/ENFILE) or memory: say so,
                    // at most once a second, and give the process a moment
                    // to close some before trying again.
                    if self
                        .last_logged
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
                    {
                        self.last_logged = Some(Instant::now());
                        let hint = if matches!(e.raw_os_error(), Some(23 | 24)) {
                            "out of file descriptors: raise the limit (LimitNOFILE) or lower [connections] caps"
                        } else {
                            "retrying"
                        };
                        tracing::error!(listener = self.what, error = %e, "cannot accept connections: {hint}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A connection that holds its listener permit while open and, with an
/// `idle` time, fails with `TimedOut` once no byte has moved either way
/// for that long.
#[derive(Debug)]
pub struct IdleIo<T> {
    inner: T,
    idle: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
    _permit: OwnedSemaphorePermit,
}

impl<T> IdleIo<T> {
    /// Wraps `inner`; `idle: None` never times out.
    pub fn new(inner: T, idle: Option<Duration>, permit: OwnedSemaphorePermit) -> Self {
        Self {
            inner,
            idle: idle.unwrap_or_default(),
            deadline: idle.map(|d| Box::pin(tokio::time::sleep(d))),
            _permit: permit,
        }
    }

    fn moved(&mut self) {
        let next = tokio::time::Instant::now() + self.idle;
        if let Some(deadline) = self.deadline.as_mut() {
            deadline.as_mut().reset(next);
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline
            .as_mut()
            .is_some_and(|d| d.as_mut().poll(cx).is_ready())
    }
}

fn timed_out<T>(idle: Duration) -> Poll<io::Result<T>> {
    Poll::Ready(Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("connection idle for {}", humantime::format_duration(idle)),
    )))
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending if self.expired(cx) => timed_out(self.idle),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    self.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending if self.expired(cx) => timed_out(self.idle),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
