//! Requests built to make the broker spend: each must be refused before
//! any work, with the right code, quickly, with a short answer (nothing
//! echoed back), and the broker must stay up and small.

use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use credbroker_proto::v1::{
    AttestRequest, GetJwksRequest, JwtRequest, RevokeRequest, revoke_request,
};
use prost::Message;
use tonic::Code;

use super::process::{BrokerProcess, http_status};
use super::{Checks, h2raw, ms};

/// Longest a refusal may take.
const ANSWER_BOUND: Duration = Duration::from_secs(2);
/// Longest answer message (a refusal quotes at most 64 characters).
const MESSAGE_BOUND: usize = 1024;
/// Most the broker's RSS may grow over the whole job, KiB.
const RSS_GROWTH_BOUND_KB: u64 = 64 * 1024;
/// Request bytes sent at most for a message claimed larger.
const MAX_SEND: u64 = 16 * 1024 * 1024;

fn record(
    checks: &mut Checks,
    what: &str,
    want: Code,
    code: Option<i32>,
    message: &str,
    elapsed: Duration,
) {
    let got = code.map(Code::from_i32);
    checks.check(
        &format!("{what}: answer"),
        got.map_or("none".to_owned(), |c| format!("{c:?}")),
        format!("{want:?}"),
        got == Some(want),
    );
    checks.check(
        &format!("{what}: time"),
        ms(elapsed),
        format!("<= {}", ms(ANSWER_BOUND)),
        elapsed <= ANSWER_BOUND,
    );
    checks.check(
        &format!("{what}: answer size"),
        format!("{} bytes", message.len()),
        format!("<= {MESSAGE_BOUND} bytes"),
        message.len() <= MESSAGE_BOUND,
    );
}

async fn timed<T>(
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> (Option<i32>, String, Duration) {
    let began = Instant::now();
    let result = call.await;
    let elapsed = began.elapsed();
    match result {
        Ok(_) => (Some(0), String::new(), elapsed),
        Err(s) => (Some(s.code() as i32), s.message().to_owned(), elapsed),
    }
}

/// Runs the amplification requests against `broker`.
pub async fn run(broker: &mut BrokerProcess) -> Result<Checks> {
    let mut checks = Checks::default();
    let mut admin = broker.admin().await?;
    let rss_before = broker.rss_kb().unwrap_or(0);
    let bundle = broker.operator()?.bundle_pem;
    let port: u16 = broker.url.rsplit(':').next().unwrap_or_default().parse()?;

    // One Attest carrying 20,000 JWT requests of 20,000 scopes each: 1.2 GB
    // on the wire. It is generated as it is sent; the broker must refuse it
    // from its 5-byte length prefix.
    let one = AttestRequest {
        jwts: vec![JwtRequest {
            scopes: vec!["s".to_owned(); 20_000],
            ..JwtRequest::default()
        }],
        ..AttestRequest::default()
    }
    .encode_to_vec();
    let claimed = u32::try_from(one.len() as u64 * 20_000)?;
    checks.note(
        "Attest 20,000 JWTs x 20,000 scopes: size",
        format!("{claimed} bytes"),
    );
    let a = h2raw::call(
        port,
        &bundle,
        "/credbroker.v1.Workload/Attest",
        claimed,
        Bytes::from(one.clone()),
        MAX_SEND,
    )
    .await?;
    checks.note(
        "Attest 20,000 x 20,000: bytes sent before the answer",
        a.sent,
    );
    record(
        &mut checks,
        "Attest 20,000 x 20,000",
        Code::OutOfRange,
        a.code,
        &a.message,
        a.elapsed,
    );

    // One JWT request of 20,000 scopes fits under the 64 KiB cap: the
    // count limit must refuse it.
    let client = broker.client().await?;
    let mut grpc = client.anonymous().grpc();
    let fits = AttestRequest {
        jwts: vec![JwtRequest {
            scopes: vec!["s".to_owned(); 20_000],
            ..JwtRequest::default()
        }],
        ..AttestRequest::default()
    };
    let (code, message, elapsed) = timed(grpc.attest(fits)).await;
    record(
        &mut checks,
        "Attest 1 JWT x 20,000 scopes (60 KB)",
        Code::InvalidArgument,
        code,
        &message,
        elapsed,
    );

    let (code, message, elapsed) = timed(grpc.get_jwks(GetJwksRequest {
        env: "e".repeat(3_900_000),
    }))
    .await;
    record(
        &mut checks,
        "GetJwks with a 3.9 MB env name",
        Code::OutOfRange,
        code,
        &message,
        elapsed,
    );

    let revoke = |jti: String| RevokeRequest {
        target: Some(revoke_request::Target::Jti(jti)),
        reason: "soak".to_owned(),
    };
    let (code, message, elapsed) = timed(admin.grpc().revoke(revoke("j".repeat(1 << 20)))).await;
    record(
        &mut checks,
        "Revoke a 1 MB jti",
        Code::OutOfRange,
        code,
        &message,
        elapsed,
    );
    let (code, message, elapsed) = timed(admin.grpc().revoke(revoke("j".repeat(200_000)))).await;
    record(
        &mut checks,
        "Revoke a 200 KB jti (under the cap)",
        Code::InvalidArgument,
        code,
        &message,
        elapsed,
    );

    let garbage = Bytes::from(vec![0xFFu8; 64]);
    let a = h2raw::call(
        port,
        &bundle,
        "/credbroker.v1.Workload/Attest",
        64,
        garbage,
        69,
    )
    .await?;
    record(
        &mut checks,
        "Attest with bytes that are not protobuf",
        Code::InvalidArgument,
        a.code,
        &a.message,
        a.elapsed,
    );

    let healthz = http_status(broker.http_port, "/healthz", ANSWER_BOUND)
        .await
        .ok();
    checks.check(
        "/healthz afterwards",
        healthz.map_or("none".into(), |s| s.to_string()),
        "200",
        healthz == Some(200),
    );
    let alive = broker.alive();
    checks.check("broker still running", alive, "true", alive);
    let growth = broker.rss_kb().unwrap_or(0).saturating_sub(rss_before);
    checks.check(
        "broker RSS growth",
        format!("{} KiB", growth),
        format!("<= {RSS_GROWTH_BOUND_KB} KiB"),
        growth <= RSS_GROWTH_BOUND_KB,
    );
    Ok(checks)
}
