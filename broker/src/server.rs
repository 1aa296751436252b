//! Starting and stopping the broker: gRPC over TLS, HTTP, and the
//! background flush of usage times.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use credbroker_proto::v1::admin_server::AdminServer;
use credbroker_proto::v1::workload_server::WorkloadServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;

use crate::api::bounded::BoundedListener;
use crate::api::grpc_idle::Connections;
use crate::api::{AdminService, WorkloadService, grpc_tls, http, http_serve, limits};
use crate::broker::{Broker, StartError};
use crate::config::Config;
use crate::model::unix_now;

/// How often usage times (last issued / last seen) reach the store.
const USAGE_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How often revocations that cover nothing any more are dropped.
const REVOCATION_PRUNE_INTERVAL: Duration = Duration::from_secs(10);
/// How often expired join tokens are deleted.
const PURGE_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// How long the change feed keeps a change: brokers sharing the store read
/// it within a second; one that was away longer reloads at restart.
const CHANGE_RETENTION_MS: i64 = 24 * 60 * 60 * 1000;
/// Expired join tokens are kept this long so a late attempt is told
/// "expired" rather than "not recognized".
const EXPIRED_TOKEN_GRACE: i64 = 24 * 60 * 60;
/// How often audit retention looks for entries past `audit_retention`.
const RETENTION_INTERVAL: Duration = Duration::from_secs(10 * 60);
/// Longest time one RPC may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest the key schedule sleeps: a clock that jumped is noticed.
const KEY_SCHEDULE_MAX_SLEEP: Duration = Duration::from_secs(60);
/// Longest time a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A running broker.
#[derive(Debug)]
pub struct RunningBroker {
    /// The shared state.
    pub broker: Arc<Broker>,
    /// Where gRPC listens (useful when configured with port 0).
    pub grpc_addr: SocketAddr,
    /// Where HTTP listens.
    pub http_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<(), StartError>>>,
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Io {
            what: format!("binding {what} listener on {addr}"),
            source,
        })
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Opens the broker and starts serving.
pub async fn start(config: Config) -> Result<RunningBroker, StartError> {
    // Whatever else links rustls, the server uses ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let broker = Broker::open(config).await?;
    let grpc = bind(broker.config.grpc_listen, "gRPC").await?;
    let http_listener = bind(broker.config.http_listen, "HTTP").await?;
    let grpc_addr = grpc.local_addr().map_err(|source| StartError::Io {
        what: "reading gRPC address".into(),
        source,
    })?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|source| StartError::Io {
            what: "reading HTTP address".into(),
            source,
        })?;
    let (stop, stop_rx) = watch::channel(false);

    // TLS that follows the key ring: client CAs and the server certificate
    // as published now, not as they were at start.
    let tls_config =
        grpc_tls::server_config(Arc::clone(&broker.keys)).map_err(|e| StartError::Io {
            what: "configuring gRPC TLS".into(),
            source: std::io::Error::other(e),
        })?;
    // Every call marks its connection as in use (see api::grpc_idle).
    let connections = Connections::default();
    let touch = {
        let connections = connections.clone();
        move |request: tonic::Request<()>| {
            connections.touch(request.remote_addr());
            Ok(request)
        }
    };
    let grpc_server = Server::builder()
        .timeout(RPC_TIMEOUT)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .layer(crate::metrics::rpc::RpcMetricsLayer(Arc::clone(
            &broker.metrics,
        )))
        .add_service(InterceptedService::new(
            WorkloadServer::new(
                WorkloadService::new(Arc::clone(&broker), stop_rx.clone())
                    .with_connections(connections.clone()),
            )
            .max_decoding_message_size(limits::MAX_WORKLOAD_MESSAGE),
            touch.clone(),
        ))
        .add_service(InterceptedService::new(
            AdminServer::new(AdminService::new(Arc::clone(&broker)))
                .max_decoding_message_size(limits::MAX_ADMIN_MESSAGE),
            touch,
        ))
        .serve_with_incoming_shutdown(
            grpc_tls::incoming(
                BoundedListener::new(grpc, broker.config.connections.grpc_max_connections, "gRPC"),
                Arc::new(tls_config),
                HANDSHAKE_TIMEOUT,
                (connections, broker.config.connections.grpc_idle_timeout),
            ),
            stopped(stop_rx.clone()),
        );
    let grpc_task = tokio::spawn(async move { grpc_server.await.map_err(StartError::from) });

    let router = http::router(Arc::clone(&broker));
    let http_stop = stopped(stop_rx.clone());
    let bounds = broker.config.connections.clone();
    let http_task = tokio::spawn(async move {
        http_serve::serve(http_listener, router, &bounds, http_stop).await;
        Ok(())
    });

    let rotation_task = tokio::spawn(rotate_keys(Arc::clone(&broker), stopped(stop_rx.clone())));
    let follow_task = tokio::spawn({
        let (broker, stop) = (Arc::clone(&broker), stopped(stop_rx.clone()));
        async move {
            let cursor = broker.feed_start;
            crate::replica::follow(broker, cursor, stop).await;
            Ok(())
        }
    });
    let campaign_task = tokio::spawn({
        let (broker, stop) = (Arc::clone(&broker), stopped(stop_rx.clone()));
        async move {
            crate::replica::campaign(broker, stop).await;
            Ok(())
        }
    });
    let retention_task = tokio::spawn(retain_audit(Arc::clone(&broker), stopped(stop_rx.clone())));

    let flusher = Arc::clone(&broker);
    let flush_stop = stopped(stop_rx);
    let flush_task = tokio::spawn(async move {
        tokio::pin!(flush_stop);
        let mut tick = tokio::time::interval(USAGE_FLUSH_INTERVAL);
        let mut purge = tokio::time::interval(PURGE_INTERVAL);
        let mut prune = tokio::time::interval(REVOCATION_PRUNE_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = flusher.registry.flush_usage(unix_now()).await {
                        tracing::warn!(error = %e, "could not record usage times; will retry");
                    }
                }
                _ = prune.tick() => {
                    let now = unix_now();
                    let dropped = flusher.revocations.prune(now);
                    if dropped > 0 {
                        tracing::info!(dropped, "revocations expired with everything they covered");
                    }
                    // Purges are the leader's: one broker deletes for all.
                    if flusher.leadership.leads()
                        && let Err(e) = flusher.store.purge_revocations(now).await
                    {
                        tracing::warn!(error = %e, "could not purge expired revocations");
                    }
                }
                _ = purge.tick(), if flusher.leadership.leads() => {
                    let before = unix_now() - EXPIRED_TOKEN_GRACE;
                    match flusher.store.purge_join_tokens(before).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(purged = n, "deleted expired join tokens"),
                        Err(e) => tracing::warn!(error = %e, "could not purge expired join tokens"),
                    }
                    match flusher.store.purge_jtis(unix_now()).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(purged = n, "forgot expired single-use token ids"),
                        Err(e) => tracing::warn!(error = %e, "could not purge expired token ids"),
                    }
                    let before = crate::model::unix_now_ms() - CHANGE_RETENTION_MS;
                    if let Err(e) = flusher.store.purge_changes(before).await {
                        tracing::warn!(error = %e, "could not purge the change feed");
                    }
                }
                () = &mut flush_stop => break,
            }
        }
        let _ = flusher.registry.flush_all_usage(unix_now()).await;
        if let Err(e) = flusher.audit.flush().await {
            tracing::error!(error = %e, "audit log not flushed at shutdown");
        }
        Ok(())
    });

    tracing::info!(grpc = %grpc_addr, http = %http_addr, data_dir = %broker.config.data_dir.display(), "credbroker serving");
    Ok(RunningBroker {
        broker,
        grpc_addr,
        http_addr,
        stop,
        tasks: vec![
            grpc_task,
            http_task,
            flush_task,
            rotation_task,
            follow_task,
            campaign_task,
            retention_task,
        ],
    })
}

/// Keeps the key rotation schedule: runs it whenever something is due, at
/// least every [`KEY_SCHEDULE_MAX_SLEEP`], and when this broker becomes the
/// leader (only the leader creates keys). A failure (store busy) is logged
/// and retried; the keys already published keep serving.
async fn rotate_keys(
    broker: Arc<Broker>,
    stop: impl Future<Output = ()>,
) -> Result<(), StartError> {
    tokio::pin!(stop);
    let mut leadership = broker.leadership.subscribe();
    loop {
        let now = unix_now();
        let leads = *leadership.borrow_and_update();
        let next = match broker.keys.tick(now, leads).await {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "key rotation failed; retrying");
                now + 1
            }
        };
        let sleep = Duration::from_secs(next.saturating_sub(unix_now()).max(0) as u64)
            .min(KEY_SCHEDULE_MAX_SLEEP);
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            _ = leadership.changed() => {}
            () = &mut stop => return Ok(()),
        }
    }
}

/// Applies `audit_retention` every [`RETENTION_INTERVAL`] (first at
/// start): exports and deletes what is past it, and audits each purge. A
/// failure deletes nothing, is logged and retried at the next run.
async fn retain_audit(
    broker: Arc<Broker>,
    stop: impl Future<Output = ()>,
) -> Result<(), StartError> {
    use crate::audit::retention::{RetentionPolicy, catch_up};
    let Some(keep) = broker.config.audit_retention else {
        return Ok(());
    };
    let policy = RetentionPolicy {
        keep,
        export_dir: broker.config.audit_export_dir(),
    };
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(RETENTION_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leads = broker.leadership.subscribe();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut stop => return Ok(()),
        }
        // One broker exports and deletes for all that share the store: the
        // leader (on SQLite, this one, within moments of starting).
        tokio::select! {
            led = leads.wait_for(|leads| *leads) => if led.is_err() { return Ok(()) },
            () = &mut stop => return Ok(()),
        }
        let now_ms = unix_now().saturating_mul(1000);
        let (purges, error) =
            catch_up(broker.store.as_ref(), broker.audit.seal(), &policy, now_ms).await;
        for p in purges {
            let detail = format!(
                "retention exported entries {}..{} to {} and deleted {} rows",
                p.first,
                p.last,
                p.export.display(),
                p.deleted
            );
            let mut record = crate::audit::AuditRecord::new(&broker.audit, "audit.retention", None);
            record.actor = Some("broker".to_owned());
            record.changed(&detail);
        }
        if let Some(e) = error {
            tracing::error!(error = %e, "audit retention failed; retrying at the next run");
        }
    }
}

impl RunningBroker {
    /// Serves until `signal` completes, then shuts down gracefully.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<(), StartError> {
        signal.await;
        self.shutdown().await
    }

    /// Stops serving, waits for in-flight work and flushes usage times.
    pub async fn shutdown(self) -> Result<(), StartError> {
        let _ = self.stop.send(true);
        for task in self.tasks {
            match task.await {
                Ok(result) => result?,
                Err(e) => tracing::error!(error = %e, "server task panicked"),
            }
        }
        // In-flight calls have finished: commit what they audited.
        if let Err(e) = self.broker.audit.checkpoint().await {
            tracing::error!(error = %e, "audit log not flushed at shutdown");
        }
        tracing::info!("credbroker stopped");
        Ok(())
    }
}
