//! The SPIFFE Workload API of a node agent: every call is attested from the
//! caller's process, and answered with the identities of this node whose
//! selectors that process proves — several SVIDs in one response when
//! several match, PermissionDenied when none does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use credbroker_proto::spiffe::spiffe_workload_api_server::SpiffeWorkloadApi;
use credbroker_proto::spiffe::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svid, X509svidRequest, X509svidResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::uds::streams::{Slotted, StreamSlots};
use tonic::{Request, Response, Status};

use super::cache::{SvidCache, SvidState, WorkloadSvid};
use super::entries::{EntriesState, Entry, EntrySet};
use super::process::ProcessFacts;
use crate::client::Client;
use crate::source::{SourceState, usable};
use crate::uds::PeerCred;
use crate::workload_api::{Validators, check_header, concat_der, jwt_bundles, trust_domain};

type Stream<T> = Slotted<ReceiverStream<Result<T, Status>>>;

/// How long a call waits for the first entry snapshot after start-up.
const SYNC_WAIT: Duration = Duration::from_secs(10);

/// The Workload API of a node agent.
#[derive(Clone)]
pub struct NodeWorkloadApi {
    /// `env/name` of the node, for messages.
    node_name: Arc<str>,
    node: watch::Receiver<SourceState>,
    entries: watch::Receiver<Arc<EntrySet>>,
    cache: Arc<SvidCache>,
    client: Client,
    validators: Validators,
    streams: StreamSlots,
}

impl std::fmt::Debug for NodeWorkloadApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeWorkloadApi")
            .field("node", &self.node_name)
            .finish_non_exhaustive()
    }
}

/// What a call's process may have: its facts and the entries it matches.
struct Caller {
    process: Arc<ProcessFacts>,
}

fn peer_process<T>(request: &Request<T>) -> Result<Arc<ProcessFacts>, Status> {
    let cred = request
        .extensions()
        .get::<PeerCred>()
        .ok_or_else(|| Status::permission_denied("the caller's credentials are unknown"))?;
    ProcessFacts::attest(cred.pid, cred.uid, cred.gid)
        .map(Arc::new)
        .map_err(|e| Status::permission_denied(e.to_string()))
}

fn x509svid(s: &WorkloadSvid) -> X509svid {
    X509svid {
        spiffe_id: s.svid.spiffe_id.clone(),
        x509_svid: concat_der(&s.svid.cert_chain),
        x509_svid_key: s.svid.private_key.secret_pkcs8_der().to_vec(),
        bundle: concat_der(&s.bundle.certs),
        hint: String::new(),
    }
}

impl NodeWorkloadApi {
    pub(super) fn new(
        node_name: String,
        node: watch::Receiver<SourceState>,
        entries: watch::Receiver<Arc<EntrySet>>,
        cache: Arc<SvidCache>,
        client: Client,
    ) -> Self {
        Self {
            node_name: node_name.into(),
            node,
            entries,
            cache,
            client,
            validators: Validators::default(),
            streams: StreamSlots::default(),
        }
    }

    fn nothing_for(&self, process: &ProcessFacts) -> Status {
        Status::permission_denied(format!(
            "no identity registered for uid {} on node {} (caller proves {})",
            process.uid,
            self.node_name,
            process.describe()
        ))
    }

    /// The current entry set once the first snapshot arrived.
    async fn synced(&self) -> Result<Arc<EntrySet>, Status> {
        let mut entries = self.entries.clone();
        let wait = entries.wait_for(|set| set.state != EntriesState::Syncing);
        match tokio::time::timeout(SYNC_WAIT, wait).await {
            Ok(Ok(set)) => Ok(Arc::clone(&set)),
            Ok(Err(_)) => Err(Status::unavailable("the node agent is shutting down")),
            Err(_) => Err(Status::unavailable(
                "the node agent has not received its identities from the broker yet",
            )),
        }
    }

    /// The entries the calling process matches now; refuses when none.
    async fn matching(&self, caller: &Caller) -> Result<Vec<Arc<Entry>>, Status> {
        let set = self.synced().await?;
        if let EntriesState::Refused(reason) = &set.state {
            return Err(Status::permission_denied(format!(
                "node {} is refused by the broker: {reason}",
                self.node_name
            )));
        }
        let matched = set.matching(&caller.process);
        if matched.is_empty() {
            return Err(self.nothing_for(&caller.process));
        }
        Ok(matched)
    }

    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        check_header(request)?;
        Ok(Caller {
            process: peer_process(request)?,
        })
    }

    fn node_env(&self) -> Result<String, Status> {
        usable(&self.node.borrow())
            .map(|c| c.identity.0.clone())
            .map_err(|e| Status::unavailable(format!("node credentials: {e}")))
    }
}

/// What one X.509 stream last sent, to send only changes.
fn fingerprint(svids: &[Arc<WorkloadSvid>]) -> Vec<String> {
    svids.iter().map(|s| s.svid.serial.clone()).collect()
}

/// The SVIDs of `matched`, or why none can be served yet. `Ok(None)` means
/// some are still being minted.
fn collect_svids(
    api: &NodeWorkloadApi,
    matched: &[Arc<Entry>],
) -> Result<Option<Vec<Arc<WorkloadSvid>>>, Status> {
    let mut ready = Vec::new();
    let mut pending = false;
    let mut failure = None;
    for entry in matched {
        match api.cache.svid(entry) {
            SvidState::Ready(s) if !s.svid.remaining().is_zero() => ready.push(s),
            SvidState::Ready(_) | SvidState::Pending => pending = true,
            SvidState::Failed { reason, refused } => failure = Some((reason, refused)),
        }
    }
    if pending {
        return Ok(None);
    }
    if ready.is_empty() {
        let (reason, refused) = failure.unwrap_or_default();
        return Err(if refused {
            Status::permission_denied(reason)
        } else {
            Status::unavailable(reason)
        });
    }
    Ok(Some(ready))
}

/// Streams the caller's SVIDs: again on every rotation or change of its
/// set; ends with PermissionDenied once it matches no identity (disabled,
/// removed, node refused).
async fn stream_x509(
    api: NodeWorkloadApi,
    caller: Caller,
    tx: mpsc::Sender<Result<X509svidResponse, Status>>,
) {
    let mut entries = api.entries.clone();
    let mut generation = api.cache.generation();
    let mut last: Option<Vec<String>> = None;
    loop {
        entries.borrow_and_update();
        generation.borrow_and_update();
        let answer = match api.matching(&caller).await {
            Ok(matched) => collect_svids(&api, &matched),
            Err(e) => Err(e),
        };
        match answer {
            Ok(Some(svids)) => {
                let now = fingerprint(&svids);
                if last.as_ref() != Some(&now) {
                    let message = X509svidResponse {
                        svids: svids.iter().map(|s| x509svid(s)).collect(),
                        crl: vec![],
                        federated_bundles: HashMap::new(),
                    };
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                    last = Some(now);
                }
            }
            Ok(None) => {}
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        }
        tokio::select! {
            changed = entries.changed() => if changed.is_err() { return },
            changed = generation.changed() => if changed.is_err() { return },
            () = tx.closed() => return,
        }
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for NodeWorkloadApi {
    type FetchX509SVIDStream = Stream<X509svidResponse>;
    type FetchX509BundlesStream = Stream<X509BundlesResponse>;
    type FetchJWTBundlesStream = Stream<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let caller = self.caller(&request)?;
        // Refuse before the stream opens when nothing matches.
        self.matching(&caller).await?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(stream_x509(self.clone(), caller, tx));
        Ok(Response::new(
            self.streams.admit(&request, ReceiverStream::new(rx))?,
        ))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let caller = self.caller(&request)?;
        self.matching(&caller).await?;
        let (tx, rx) = mpsc::channel(4);
        let api = self.clone();
        tokio::spawn(async move {
            let mut node = api.node.clone();
            let mut last = None;
            loop {
                let state = node.borrow_and_update().clone();
                match usable(&state) {
                    Ok(creds) => {
                        let bundle = concat_der(&creds.bundle.certs);
                        if last.as_ref() != Some(&bundle) {
                            let message = X509BundlesResponse {
                                crl: vec![],
                                bundles: HashMap::from([(
                                    trust_domain(&creds.svid.spiffe_id),
                                    bundle.clone(),
                                )]),
                            };
                            if tx.send(Ok(message)).await.is_err() {
                                return;
                            }
                            last = Some(bundle);
                        }
                    }
                    Err(crate::source::SourceError::NotReady) => {}
                    Err(e) => {
                        let _ = tx.send(Err(Status::unavailable(e.to_string()))).await;
                        return;
                    }
                }
                tokio::select! {
                    changed = node.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(
            self.streams.admit(&request, ReceiverStream::new(rx))?,
        ))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let mut matched = self.matching(&caller).await?;
        if !req.spiffe_id.is_empty() {
            matched.retain(|e| e.spiffe_id == req.spiffe_id);
            if matched.is_empty() {
                return Err(Status::permission_denied(format!(
                    "this caller is not {}",
                    req.spiffe_id
                )));
            }
        }
        // Only identities allowed every requested audience get a JWT.
        matched.retain(|e| req.audience.iter().all(|a| e.audiences.contains(a)));
        if matched.is_empty() {
            return Err(Status::permission_denied(format!(
                "no identity of this caller may carry audience {}",
                req.audience.join(", ")
            )));
        }
        let mut svids = Vec::with_capacity(matched.len());
        for entry in matched {
            let jwt = self
                .cache
                .jwt(&entry.key, &req.audience)
                .await
                .map_err(|e| match e.code() {
                    Some(tonic::Code::PermissionDenied) => Status::permission_denied(e.to_string()),
                    Some(tonic::Code::InvalidArgument) => Status::invalid_argument(e.to_string()),
                    _ => Status::unavailable(e.to_string()),
                })?;
            svids.push(Jwtsvid {
                spiffe_id: entry.spiffe_id.clone(),
                svid: jwt.token,
                hint: String::new(),
            });
        }
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let caller = self.caller(&request)?;
        self.matching(&caller).await?;
        let env = self.node_env()?;
        let first = jwt_bundles(&self.client, &env).await?;
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.send(Ok(first)).await;
        // Keep the stream open (clients treat its end as an error) until
        // the caller goes away.
        tokio::spawn(async move { tx.closed().await });
        Ok(Response::new(
            self.streams.admit(&request, ReceiverStream::new(rx))?,
        ))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        let caller = self.caller(&request)?;
        self.matching(&caller).await?;
        let env = self.node_env()?;
        let answer = self
            .validators
            .validate(
                &self.client,
                &env,
                || async { self.cache.session().await.ok() },
                request.into_inner(),
            )
            .await?;
        Ok(Response::new(answer))
    }
}
