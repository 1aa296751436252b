//! One accepted connection: the socket, its peer's credentials, and the
//! `:authority` rewriter between the client's bytes and h2.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

use super::PeerCred;
use super::authority::Rewriter;

/// How much is read from the socket at once.
const READ_CHUNK: usize = 16 * 1024;

/// An accepted Workload API connection, as tonic sees it: reads are the
/// client's bytes with header blocks re-encoded (see
/// [`authority`](super::authority)), writes go to the client unchanged.
/// Handlers find the caller's [`PeerCred`] in the request extensions.
#[derive(Debug)]
pub struct UdsConnection {
    stream: UnixStream,
    peer: PeerCred,
    rewriter: Rewriter,
    /// Rewritten bytes not yet read by h2, from `pending_at` on.
    pending: Vec<u8>,
    pending_at: usize,
    chunk: Box<[u8]>,
    eof: bool,
}

impl UdsConnection {
    /// Wraps a freshly accepted stream, reading its peer's credentials now
    /// (the kernel recorded them at `connect`).
    pub fn new(stream: UnixStream) -> io::Result<Self> {
        let cred = stream.peer_cred()?;
        Ok(Self {
            stream,
            peer: PeerCred {
                pid: cred.pid(),
                uid: cred.uid(),
                gid: cred.gid(),
            },
            rewriter: Rewriter::new(),
            pending: Vec::new(),
            pending_at: 0,
            chunk: vec![0; READ_CHUNK].into_boxed_slice(),
            eof: false,
        })
    }

    /// The credentials of the process that connected.
    pub fn peer(&self) -> &PeerCred {
        &self.peer
    }
}

impl tonic::transport::server::Connected for UdsConnection {
    type ConnectInfo = PeerCred;

    fn connect_info(&self) -> PeerCred {
        self.peer.clone()
    }
}

impl AsyncRead for UdsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.pending_at < this.pending.len() {
                let rest = &this.pending[this.pending_at..];
                let n = rest.len().min(buf.remaining());
                buf.put_slice(&rest[..n]);
                this.pending_at += n;
                if this.pending_at == this.pending.len() {
                    this.pending.clear();
                    this.pending_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = ReadBuf::new(&mut this.chunk);
            std::task::ready!(Pin::new(&mut this.stream).poll_read(cx, &mut chunk))?;
            if chunk.filled().is_empty() {
                this.eof = true;
                continue;
            }
            if let Err(e) = this.rewriter.feed(chunk.filled(), &mut this.pending) {
                tracing::warn!(
                    error = %e,
                    peer_pid = ?this.peer.pid,
                    peer_uid = this.peer.uid,
                    "closing Workload API connection"
                );
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
    }
}

impl AsyncWrite for UdsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
