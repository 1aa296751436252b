//! Rewrites the `:authority` a client sends over the Workload API socket.
//!
//! Why this exists: gRPC C-core clients (py-spiffe on grpcio, so Python,
//! C++, Ruby, PHP) and grpc-java send the socket *path* (`/run/agent.sock`)
//! as the HTTP/2 `:authority` of a `unix:` target. h2 0.4, under tonic,
//! refuses any `:authority` that is not a valid URI authority with
//! RST_STREAM PROTOCOL_ERROR before a handler runs (hyperium/h2#487 is
//! unmerged), so those clients could not use the agent at all. The authority
//! means nothing on a Unix socket, so we accept whatever is sent.
//!
//! How: every byte from the client passes through unchanged except the
//! header blocks (HEADERS + CONTINUATION frames). Those are HPACK-decoded
//! with h2's own codec (one decoder per connection, so the client's dynamic
//! table stays in step) and re-encoded by one encoder per connection (so the
//! server's table stays in step with what it is sent), with an invalid
//! `:authority` replaced by `localhost`. DATA, SETTINGS, PING, padding and
//! unknown frames keep their exact bytes, so flow control is untouched.
//! Every header block is re-encoded, valid or not: once one block was
//! rewritten the server's HPACK table no longer matches the client's.
//!
//! Limits: a header block larger than [`MAX_HEADER_BLOCK`] bytes, on the wire
//! or decoded, closes the connection (HPACK can expand a few bytes into many),
//! as does a block h2 cannot decode — which the server would refuse anyway.
//! The rewriter assumes the server keeps h2's default HPACK table size
//! (4096), as tonic does. Priority information in HEADERS is dropped (h2
//! ignores it) and never-indexed marks are not kept (the re-encoded block
//! only travels inside this process).

use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll, Waker};

use h2::Codec;
use h2::frame::{BytesStr, Frame, Headers};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_stream::Stream;
use tonic::codegen::http::uri::Authority;

/// The largest header block accepted, on the wire or decoded (64 KiB).
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// What an invalid `:authority` becomes (what the `spiffe` crate sends).
const FALLBACK_AUTHORITY: &str = "localhost";

const PREFACE_LEN: usize = 24;
const FRAME_HEAD_LEN: usize = 9;
const KIND_HEADERS: u8 = 0x1;
const KIND_CONTINUATION: u8 = 0x9;
const FLAG_END_HEADERS: u8 = 0x4;
/// The largest frame HTTP/2 allows; our own block bound applies first.
const MAX_FRAME_SIZE: usize = (1 << 24) - 1;

/// Why a connection was closed instead of forwarded.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    /// The client sent a header block larger than [`MAX_HEADER_BLOCK`].
    #[error("header block of stream {stream} is larger than {MAX_HEADER_BLOCK} bytes")]
    BlockTooLarge {
        /// The HTTP/2 stream.
        stream: u32,
    },
    /// The header block decodes to more than [`MAX_HEADER_BLOCK`] bytes.
    #[error("decoded header list of stream {stream} is larger than {MAX_HEADER_BLOCK} bytes")]
    ListTooLarge {
        /// The HTTP/2 stream.
        stream: u32,
    },
    /// A header block was interrupted by another frame.
    #[error("expected a CONTINUATION frame of stream {stream}, got a frame of type {kind:#x}")]
    ExpectedContinuation {
        /// The stream whose header block was open.
        stream: u32,
        /// The type of the frame that arrived instead.
        kind: u8,
    },
    /// h2 could not decode the header block.
    #[error("cannot decode the header block of stream {stream}: {reason}")]
    Decode {
        /// The HTTP/2 stream.
        stream: u32,
        /// What h2 said.
        reason: String,
    },
    /// h2 could not re-encode the header block.
    #[error("cannot re-encode the header block of stream {stream}: {reason}")]
    Encode {
        /// The HTTP/2 stream.
        stream: u32,
        /// What h2 said.
        reason: String,
    },
}

/// In-memory I/O for the codec: it reads only the header blocks we hand it
/// and writes into a buffer we drain, never touching the socket.
#[derive(Debug, Default)]
struct Memory {
    input: Vec<u8>,
    read: usize,
    output: Vec<u8>,
}

impl AsyncRead for Memory {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let rest = &self.input[self.read..];
        if rest.is_empty() {
            // Only complete blocks are handed over, so this means "no more".
            return Poll::Pending;
        }
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.read += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Memory {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.output.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The client-to-server half of one connection: bytes in, bytes out.
pub struct Rewriter {
    /// Connection preface bytes still to pass through.
    preface_left: usize,
    /// The frame header being read.
    head: [u8; FRAME_HEAD_LEN],
    head_len: usize,
    /// Payload bytes of the current non-header frame still to pass through.
    passthrough: usize,
    /// The stream whose header block is being collected, if any.
    block_stream: Option<u32>,
    /// Raw frames (heads included) of that header block.
    block: Vec<u8>,
    /// Payload bytes of the current header frame still to collect.
    frame_left: usize,
    frame_ends_block: bool,
    codec: Codec<Memory, &'static [u8]>,
    rewritten: u64,
}

impl std::fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter")
            .field("rewritten", &self.rewritten)
            .finish_non_exhaustive()
    }
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Rewriter {
    /// A rewriter for a new connection (expecting the client preface).
    pub fn new() -> Self {
        let mut codec = Codec::with_max_recv_frame_size(Memory::default(), MAX_FRAME_SIZE);
        codec.set_max_recv_header_list_size(MAX_HEADER_BLOCK);
        Self {
            preface_left: PREFACE_LEN,
            head: [0; FRAME_HEAD_LEN],
            head_len: 0,
            passthrough: 0,
            block_stream: None,
            block: Vec::new(),
            frame_left: 0,
            frame_ends_block: false,
            codec,
            rewritten: 0,
        }
    }

    /// How many `:authority` values were replaced so far.
    pub fn rewritten(&self) -> u64 {
        self.rewritten
    }

    /// Consumes `input` (any split of the client's byte stream) and appends
    /// what the server must see to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        while !input.is_empty() {
            if self.preface_left > 0 {
                // Not checked here: h2 refuses a wrong preface itself.
                let n = self.preface_left.min(input.len());
                out.extend_from_slice(&input[..n]);
                self.preface_left -= n;
                input = &input[n..];
            } else if self.passthrough > 0 {
                let n = self.passthrough.min(input.len());
                out.extend_from_slice(&input[..n]);
                self.passthrough -= n;
                input = &input[n..];
            } else if self.frame_left > 0 {
                let n = self.frame_left.min(input.len());
                self.block.extend_from_slice(&input[..n]);
                self.frame_left -= n;
                input = &input[n..];
                if self.frame_left == 0 && self.frame_ends_block {
                    self.finish_block(out)?;
                }
            } else {
                let n = (FRAME_HEAD_LEN - self.head_len).min(input.len());
                self.head[self.head_len..self.head_len + n].copy_from_slice(&input[..n]);
                self.head_len += n;
                input = &input[n..];
                if self.head_len == FRAME_HEAD_LEN {
                    self.head_len = 0;
                    self.frame_head(out)?;
                }
            }
        }
        Ok(())
    }

    /// Dispatches on a complete frame header in `self.head`.
    fn frame_head(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let head = self.head;
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        match self.block_stream {
            Some(open) if kind != KIND_CONTINUATION => {
                Err(RewriteError::ExpectedContinuation { stream: open, kind })
            }
            Some(open) => self.header_frame(open, len, flags, out),
            None if kind == KIND_HEADERS => {
                self.block_stream = Some(stream);
                self.header_frame(stream, len, flags, out)
            }
            None => {
                out.extend_from_slice(&head);
                self.passthrough = len;
                Ok(())
            }
        }
    }

    /// Starts collecting one HEADERS or CONTINUATION frame of `stream`.
    fn header_frame(
        &mut self,
        stream: u32,
        len: usize,
        flags: u8,
        out: &mut Vec<u8>,
    ) -> Result<(), RewriteError> {
        if self.block.len() + FRAME_HEAD_LEN + len > MAX_HEADER_BLOCK {
            return Err(RewriteError::BlockTooLarge { stream });
        }
        self.block.extend_from_slice(&self.head);
        self.frame_left = len;
        self.frame_ends_block = flags & FLAG_END_HEADERS != 0;
        if len == 0 && self.frame_ends_block {
            self.finish_block(out)?;
        }
        Ok(())
    }

    /// Decodes the collected block, fixes `:authority`, re-encodes into `out`.
    fn finish_block(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let stream = self.block_stream.take().unwrap_or_default();
        let decode = |reason: String| RewriteError::Decode { stream, reason };
        let encode = |reason: String| RewriteError::Encode { stream, reason };
        let memory = self.codec.get_mut();
        memory.input.clear();
        memory.read = 0;
        memory.input.append(&mut self.block);
        let mut cx = Context::from_waker(Waker::noop());
        let headers = match Pin::new(&mut self.codec).poll_next(&mut cx) {
            Poll::Ready(Some(Ok(Frame::Headers(headers)))) => headers,
            Poll::Ready(Some(Ok(other))) => return Err(decode(format!("got {other:?}"))),
            Poll::Ready(Some(Err(e))) => return Err(decode(e.to_string())),
            Poll::Ready(None) | Poll::Pending => return Err(decode("incomplete block".into())),
        };
        if headers.is_over_size() {
            return Err(RewriteError::ListTooLarge { stream });
        }
        let end_stream = headers.is_end_stream();
        let id = headers.stream_id();
        let (mut pseudo, fields) = headers.into_parts();
        if let Some(sent) = pseudo.authority.as_deref()
            && Authority::from_str(sent).is_err()
        {
            if self.rewritten == 0 {
                tracing::debug!(
                    authority = sent,
                    "replacing an invalid :authority with localhost on this connection"
                );
            }
            pseudo.authority =
                BytesStr::try_from(bytes::Bytes::from_static(FALLBACK_AUTHORITY.as_bytes())).ok();
            self.rewritten += 1;
        }
        // A fresh frame: the original's PADDED/PRIORITY flags describe bytes
        // that are not in the re-encoded block.
        let mut fresh = Headers::new(id, pseudo, fields);
        if end_stream {
            fresh.set_end_stream();
        }
        let ready = |p: Poll<std::io::Result<()>>| match p {
            Poll::Ready(Ok(())) => Ok(()),
            Poll::Ready(Err(e)) => Err(encode(e.to_string())),
            Poll::Pending => Err(encode("codec not ready".into())),
        };
        ready(self.codec.poll_ready(&mut cx))?;
        self.codec
            .buffer(Frame::Headers(fresh))
            .map_err(|e| encode(e.to_string()))?;
        ready(self.codec.flush(&mut cx))?;
        out.append(&mut self.codec.get_mut().output);
        Ok(())
    }
}

#[cfg(test)]
#[path = "authority_tests.rs"]
mod tests;
