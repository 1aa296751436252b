//! A real h2 client (h2's own frame codec, so it can send any `:authority`,
//! as gRPC C-core does) through the adapter into a real h2 server.

use std::future::poll_fn;
use std::time::Duration;

use bytes::Bytes;
use h2::frame::{BytesStr, Frame, Headers, Pseudo, Reason, Settings, StreamId};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::codegen::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};

use super::*;
use crate::uds::UdsConnection;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the server saw of one request.
#[derive(Debug)]
struct Seen {
    authority: Option<String>,
    path: String,
    big: Option<usize>,
    body: Vec<u8>,
}

/// A plain h2 server: records each request, answers 200.
async fn h2_server<T: AsyncRead + AsyncWrite + Unpin>(io: T, seen: mpsc::UnboundedSender<Seen>) {
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = conn.accept().await {
        let seen = seen.clone();
        tokio::spawn(async move {
            let (parts, mut body) = request.into_parts();
            let mut data = Vec::new();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
                data.extend_from_slice(&chunk);
            }
            let _ = seen.send(Seen {
                authority: parts.uri.authority().map(|a| a.to_string()),
                path: parts.uri.path().to_owned(),
                big: parts.headers.get("x-big").map(|v| v.len()),
                body: data,
            });
            let _ = respond.send_response(Response::new(()), true);
        });
    }
}

/// The client half: raw frames through h2's codec.
struct RawClient {
    codec: h2::Codec<UnixStream, Bytes>,
}

impl RawClient {
    async fn connect(mut stream: UnixStream) -> Self {
        stream.write_all(PREFACE).await.unwrap();
        let mut client = Self {
            codec: h2::Codec::new(stream),
        };
        client.send(Frame::Settings(Settings::default())).await;
        client
    }

    async fn send(&mut self, frame: Frame<Bytes>) {
        poll_fn(|cx| self.codec.poll_ready(cx)).await.unwrap();
        self.codec.buffer(frame).unwrap();
        poll_fn(|cx| self.codec.flush(cx)).await.unwrap();
    }

    async fn request(&mut self, id: u32, authority: Option<&str>, fields: HeaderMap) {
        let mut pseudo = Pseudo::request(Method::POST, Uri::from_static("/svc/Call"), None);
        pseudo.set_scheme(tonic::codegen::http::uri::Scheme::HTTP);
        pseudo.authority =
            authority.map(|a| BytesStr::try_from(Bytes::copy_from_slice(a.as_bytes())).unwrap());
        let mut headers = Headers::new(StreamId::from(id), pseudo, fields);
        headers.set_end_stream();
        self.send(Frame::Headers(headers)).await;
    }

    /// The response status of stream `id`, or why it was refused.
    async fn response(&mut self, id: u32) -> Result<StatusCode, Reason> {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), self.codec.next())
                .await
                .expect("server answers within 10 s");
            match next {
                Some(Ok(Frame::Headers(h))) if h.stream_id() == StreamId::from(id) => {
                    return Ok(h.into_parts().0.status.expect(":status"));
                }
                Some(Ok(Frame::Reset(r))) if r.stream_id() == StreamId::from(id) => {
                    return Err(r.reason());
                }
                Some(Ok(Frame::GoAway(g))) => return Err(g.reason()),
                Some(Ok(Frame::Settings(s))) if !s.is_ack() => {
                    self.send(Frame::Settings(Settings::ack())).await;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Err(Reason::CONNECT_ERROR),
            }
        }
    }
}

/// A client connected to an h2 server, through the adapter or not.
async fn pair(adapter: bool) -> (RawClient, mpsc::UnboundedReceiver<Seen>) {
    let (client, server) = UnixStream::pair().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    if adapter {
        tokio::spawn(h2_server(UdsConnection::new(server).unwrap(), tx));
    } else {
        tokio::spawn(h2_server(server, tx));
    }
    (RawClient::connect(client).await, rx)
}

#[tokio::test]
async fn without_the_adapter_h2_refuses_a_socket_path_authority() {
    // The bug this module exists for, kept as a test so an h2 release that
    // fixes it is noticed (the adapter could then go).
    let (mut client, _) = pair(false).await;
    for (id, authority) in [(1, "/run/x.sock"), (3, "%2Frun%2Fx.sock"), (5, "")] {
        client.request(id, Some(authority), HeaderMap::new()).await;
        assert_eq!(
            client.response(id).await,
            Err(Reason::PROTOCOL_ERROR),
            "{authority:?}"
        );
    }
}

#[tokio::test]
async fn any_authority_is_served_through_the_adapter() {
    let (mut client, mut seen) = pair(true).await;
    // (sent, what the server sees); the path twice so the second request
    // refers to the client's HPACK dynamic table.
    let cases: [(Option<&str>, Option<&str>); 6] = [
        (Some("/run/x.sock"), Some("localhost")),
        (Some("/run/x.sock"), Some("localhost")),
        // h2 refuses this one too (`%` must start a valid escape in a host).
        (Some("%2Frun%2Fx.sock"), Some("localhost")),
        (Some("localhost"), Some("localhost")),
        (None, None),
        (Some(""), Some("localhost")),
    ];
    for (i, (sent, expected)) in cases.into_iter().enumerate() {
        let id = 2 * i as u32 + 1;
        client.request(id, sent, HeaderMap::new()).await;
        assert_eq!(client.response(id).await, Ok(StatusCode::OK), "{sent:?}");
        let got = seen.recv().await.unwrap();
        assert_eq!(got.authority.as_deref(), expected, "{sent:?}");
        assert_eq!(got.path, "/svc/Call");
    }
}

#[tokio::test]
async fn header_blocks_split_over_continuation_frames_are_rewritten() {
    let (mut client, mut seen) = pair(true).await;
    let mut fields = HeaderMap::new();
    // Larger than one 16 KiB frame: HEADERS + CONTINUATION.
    let big = "b".repeat(40 * 1024);
    fields.insert("x-big", HeaderValue::from_str(&big).unwrap());
    client.request(1, Some("/run/x.sock"), fields).await;
    assert_eq!(client.response(1).await, Ok(StatusCode::OK));
    let got = seen.recv().await.unwrap();
    assert_eq!(got.authority.as_deref(), Some("localhost"));
    assert_eq!(got.big, Some(big.len()));
}

/// One frame: head + payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// HPACK, no Huffman, no indexing: POST http "/svc/Call" with `authority`.
fn request_block(authority: &str) -> Vec<u8> {
    let mut block = vec![0x83, 0x86, 0x04, 9];
    block.extend(b"/svc/Call");
    block.extend([0x01, authority.len() as u8]);
    block.extend(authority.as_bytes());
    block
}

#[tokio::test]
async fn padded_headers_and_data_frames_pass_intact() {
    let (client, server) = UnixStream::pair().unwrap();
    let (tx, mut seen) = mpsc::unbounded_channel();
    tokio::spawn(h2_server(UdsConnection::new(server).unwrap(), tx));
    let mut raw = PREFACE.to_vec();
    raw.extend(frame(0x4, 0, 0, &[]));
    // HEADERS, PADDED|END_HEADERS: pad length 5, block, 5 zero bytes.
    let mut payload = vec![5];
    payload.extend(request_block("/run/x.sock"));
    payload.extend([0; 5]);
    raw.extend(frame(KIND_HEADERS, 0x8 | FLAG_END_HEADERS, 1, &payload));
    // DATA, PADDED|END_STREAM: pad length 3, "hello", 3 zero bytes.
    raw.extend(frame(0x0, 0x8 | 0x1, 1, b"\x03hello\0\0\0"));
    let mut client = client;
    client.write_all(&raw).await.unwrap();
    let mut client = RawClient {
        codec: h2::Codec::new(client),
    };
    assert_eq!(client.response(1).await, Ok(StatusCode::OK));
    let got = seen.recv().await.unwrap();
    assert_eq!(got.authority.as_deref(), Some("localhost"));
    assert_eq!(got.body, b"hello");
}

/// Everything `feed` produced for `input` delivered in chunks of `chunk`.
fn rewrite(input: &[u8], chunk: usize) -> Result<Vec<u8>, RewriteError> {
    let mut rewriter = Rewriter::new();
    let mut out = Vec::new();
    for piece in input.chunks(chunk) {
        rewriter.feed(piece, &mut out)?;
    }
    Ok(out)
}

#[test]
fn output_does_not_depend_on_how_the_bytes_arrive() {
    let mut raw = PREFACE.to_vec();
    raw.extend(frame(0x4, 0, 0, &[0, 4, 0, 1, 0, 0]));
    let block = request_block("/run/x.sock");
    let (first, rest) = block.split_at(7);
    raw.extend(frame(KIND_HEADERS, 0, 1, first));
    raw.extend(frame(KIND_CONTINUATION, FLAG_END_HEADERS, 1, rest));
    raw.extend(frame(0x0, 0x1, 1, b"payload"));
    raw.extend(frame(0xfa, 0, 0, b"an unknown frame"));
    let whole = rewrite(&raw, raw.len()).unwrap();
    for chunk in [1, 2, 5, 9, 10, 23] {
        assert_eq!(rewrite(&raw, chunk).unwrap(), whole, "chunks of {chunk}");
    }
    // Non-header frames are byte-exact; the block was re-encoded.
    let tail = [
        frame(0x0, 0x1, 1, b"payload"),
        frame(0xfa, 0, 0, b"an unknown frame"),
    ]
    .concat();
    assert!(whole.ends_with(&tail));
    assert!(whole.starts_with(&raw[..PREFACE.len() + 15]));
    assert!(!whole.windows(11).any(|w| w == b"/run/x.sock"));
}

#[test]
fn an_oversized_header_block_closes_the_connection() {
    let mut raw = PREFACE.to_vec();
    // Announced larger than the bound: refused before anything is buffered.
    let mut head = frame(KIND_HEADERS, 0, 1, &[]);
    head[..3].copy_from_slice(&(MAX_HEADER_BLOCK as u32 + 1).to_be_bytes()[1..]);
    raw.extend(&head);
    assert!(matches!(
        rewrite(&raw, 64),
        Err(RewriteError::BlockTooLarge { stream: 1 })
    ));
    // Small frames adding up past the bound.
    let mut raw = PREFACE.to_vec();
    raw.extend(frame(KIND_HEADERS, 0, 1, &[0; 16_000]));
    for _ in 0..4 {
        raw.extend(frame(KIND_CONTINUATION, 0, 1, &[0; 16_000]));
    }
    assert!(matches!(
        rewrite(&raw, 4096),
        Err(RewriteError::BlockTooLarge { stream: 1 })
    ));
}

#[test]
fn a_small_block_that_decodes_huge_closes_the_connection() {
    // One 4000-byte value put in the dynamic table, then referenced 40
    // times: under 5 KiB on the wire, 160 KB decoded.
    let mut block = request_block("localhost");
    block.extend([0x40, 5]);
    block.extend(b"x-big");
    // Length 4000 with a 7-bit prefix: 127, then 3873 in 7-bit groups.
    block.push(0x7f);
    let mut rest = 4000 - 127;
    while rest >= 128 {
        block.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    block.push(rest as u8);
    block.extend(std::iter::repeat_n(b'v', 4000));
    // Index 62 is the newest dynamic entry.
    block.extend(std::iter::repeat_n(0x80 | 62, 40));
    let mut raw = PREFACE.to_vec();
    raw.extend(frame(KIND_HEADERS, FLAG_END_HEADERS, 1, &block));
    match rewrite(&raw, raw.len()) {
        Err(RewriteError::ListTooLarge { stream: 1 } | RewriteError::Decode { stream: 1, .. }) => {}
        other => panic!("expected the block refused, got {other:?}"),
    }
}

#[test]
fn a_frame_inside_a_header_block_closes_the_connection() {
    let mut raw = PREFACE.to_vec();
    raw.extend(frame(KIND_HEADERS, 0, 1, &request_block("localhost")));
    raw.extend(frame(0x0, 0, 1, b"data"));
    assert!(matches!(
        rewrite(&raw, raw.len()),
        Err(RewriteError::ExpectedContinuation { stream: 1, kind: 0 })
    ));
}

#[tokio::test]
async fn an_oversized_request_loses_its_connection() {
    let (mut client, _) = pair(true).await;
    let mut fields = HeaderMap::new();
    let huge = "h".repeat(MAX_HEADER_BLOCK + 1);
    fields.insert("x-big", HeaderValue::from_str(&huge).unwrap());
    client.request(1, Some("localhost"), fields).await;
    // The connection ends (EOF), nothing was buffered past the bound.
    assert_eq!(client.response(1).await, Err(Reason::CONNECT_ERROR));
}
