//! Serving the HTTP endpoints. `axum::serve` has no connection cap, no
//! header-read timeout (hyper applies one only when given a timer, which
//! axum does not) and no idle timeout, so idle connections could hold every
//! descriptor the process has; this loop adds all three.

use std::future::Future;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::bounded::{BoundedListener, ConnectionsConfig, IdleIo};

/// How long shutdown waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(5);

async fn closed(mut closing: watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}

/// Serves `router` on `listener` within `bounds` until `stop` completes.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    bounds: &ConnectionsConfig,
    stop: impl Future<Output = ()>,
) {
    let mut listener = BoundedListener::new(listener, bounds.http_max_connections, "HTTP");
    let (closing, closing_rx) = watch::channel(false);
    tokio::pin!(stop);
    let mut open = tokio::task::JoinSet::new();
    loop {
        let (stream, _peer, permit) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        // Reap finished connections so the set stays as small as the cap.
        while open.try_join_next().is_some() {}
        let io = IdleIo::new(stream, Some(bounds.http_idle_timeout), permit);
        let service = TowerToHyperService::new(router.clone());
        let header_timeout = bounds.http_header_timeout;
        let closing = closing_rx.clone();
        open.spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = closed(closing) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    let _ = closing.send(true);
    let _ = tokio::time::timeout(DRAIN, async { while open.join_next().await.is_some() {} }).await;
}
