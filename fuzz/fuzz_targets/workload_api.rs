//! The agent's SPIFFE Workload API, in-process: the first byte picks a
//! method, the rest is decoded as that method's request (as the server's
//! codec would) and handed to the handler with the `workload.spiffe.io`
//! header, backed by a credential source attested to a real broker. A
//! selector past the methods feeds the bytes to the `:authority` rewriter
//! that fronts the socket (raw HTTP/2 frames from any local client).
#![no_main]

use std::time::Duration;

use credbroker_client::uds::authority::Rewriter;
use credbroker_proto::spiffe::spiffe_workload_api_server::SpiffeWorkloadApi;
use credbroker_proto::spiffe::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, X509BundlesRequest, X509svidRequest,
};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tonic::Request;

fn request<T>(message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().expect("ascii"));
    r
}

fuzz_target!(|data: &[u8]| {
    let h = credbroker_fuzz::harness();
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    if selector >= 0xF0 {
        let mut out = Vec::new();
        let _ = Rewriter::new().feed(body, &mut out);
        return;
    }
    let api = &h.workload_api;
    h.rt.block_on(async {
        let work = async {
            match selector % 5 {
                0 => {
                    if let Ok(m) = X509svidRequest::decode(body)
                        && let Ok(s) = api.fetch_x509svid(request(m)).await
                    {
                        let mut s = s.into_inner();
                        let _ = tokio_first(&mut s).await;
                    }
                }
                1 => {
                    if let Ok(m) = X509BundlesRequest::decode(body)
                        && let Ok(s) = api.fetch_x509_bundles(request(m)).await
                    {
                        let mut s = s.into_inner();
                        let _ = tokio_first(&mut s).await;
                    }
                }
                2 => {
                    if let Ok(m) = JwtsvidRequest::decode(body) {
                        let _ = api.fetch_jwtsvid(request(m)).await;
                    }
                }
                3 => {
                    if let Ok(m) = JwtBundlesRequest::decode(body)
                        && let Ok(s) = api.fetch_jwt_bundles(request(m)).await
                    {
                        let mut s = s.into_inner();
                        let _ = tokio_first(&mut s).await;
                    }
                }
                _ => {
                    if let Ok(m) = ValidateJwtsvidRequest::decode(body) {
                        let _ = api.validate_jwtsvid(request(m)).await;
                    }
                }
            }
        };
        if tokio::time::timeout(credbroker_fuzz::CALL_TIMEOUT, work)
            .await
            .is_err()
        {
            panic!("Workload API call {selector} did not answer in time");
        }
    });
});

async fn tokio_first<S>(s: &mut S) -> Option<()>
where
    S: tokio_stream::Stream + Unpin,
{
    use tokio_stream::StreamExt;
    tokio::time::timeout(Duration::from_millis(200), s.next())
        .await
        .ok()
        .flatten()
        .map(|_| ())
}
