//! The `Admin` gRPC service: identities, join tokens, revocation, audit,
//! keys and operators. Every call needs an admin CA client certificate
//! whose role reaches the RPC's (see [`crate::policy::roles`]).

use std::sync::Arc;
use std::time::Duration;

use credbroker_proto::v1::admin_server::Admin;
use credbroker_proto::v1::{
    self as pb, ChangeIdentityRequest, CreateIdentityRequest, CreateJoinTokenRequest,
    CreateJoinTokenResponse, IdentityRef, ListIdentitiesRequest, ListIdentitiesResponse,
    ListKeysRequest, ListKeysResponse, ListRevocationsRequest, ListRevocationsResponse,
    QueryAuditRequest, QueryAuditResponse, RetireKeyRequest, RetireKeyResponse, RevokeRequest,
    RotateKeysRequest, VerifyAuditRequest, VerifyAuditResponse,
};
use credbroker_proto::v1::{AuditExportChunk, VerifyAuditExportResponse};
use credbroker_proto::v1::{
    CreateOperatorRequest, CreateOperatorResponse, CreateUiLoginRequest, CreateUiLoginResponse,
    ListOperatorsRequest, ListOperatorsResponse, RevokeOperatorRequest, RevokeOperatorResponse,
};
use tonic::{Request, Response, Status};

use super::identity_change::IdentityChange;
use super::operators::OperatorPeer;
use super::status;
use super::{
    admin_auth, audit_api, identity_change, join_token_api, keys_api, limits, operators_api,
    outstanding, revoke_api,
};
use crate::attest::AttestorInfo;
use crate::audit::AuditRecord;
use crate::broker::Broker;
use crate::model::{EnvName, IdentityKey, IdentityName, unix_now};
use crate::policy::node::check_node_rules;
use crate::policy::{
    IdentityRequest, IdentityView, check_selector_prefixes, selectors, validate_new_identity,
};

/// Implements `credbroker.v1.Admin`.
#[derive(Debug, Clone)]
pub struct AdminService {
    broker: Arc<Broker>,
}

impl AdminService {
    /// A service over `broker`.
    pub fn new(broker: Arc<Broker>) -> Self {
        Self { broker }
    }

    /// Authenticates the caller of `rpc` and checks its role (audited).
    fn require_admin<T>(
        &self,
        request: &Request<T>,
        rpc: &'static str,
        audit: &mut AuditRecord,
    ) -> Result<Arc<OperatorPeer>, Status> {
        admin_auth::authorize(&self.broker, request, rpc, audit)
    }
}

pub(super) fn identity_key(r: Option<&IdentityRef>) -> Result<IdentityKey, Status> {
    let r = r.ok_or_else(|| Status::invalid_argument("identity (env and name) is required"))?;
    Ok(IdentityKey {
        env: EnvName::new(&r.env).map_err(|e| Status::invalid_argument(e.to_string()))?,
        name: IdentityName::new(&r.name).map_err(|e| Status::invalid_argument(e.to_string()))?,
    })
}

fn to_proto(view: &IdentityView, outstanding: u32, attestors: &[AttestorInfo]) -> pb::Identity {
    let id = &view.identity;
    pb::Identity {
        env: id.key.env.to_string(),
        name: id.key.name.to_string(),
        spiffe_id: id.spiffe_id.to_string(),
        owner: id.owner.clone(),
        purpose: id.purpose.clone(),
        selectors: id
            .selectors
            .iter()
            .map(|s| pb::Selector {
                key: s.key.clone(),
                value: s.value.clone(),
            })
            .collect(),
        audiences: id.audiences.iter().map(ToString::to_string).collect(),
        scopes: id.scopes.iter().map(ToString::to_string).collect(),
        jwt_ttl_seconds: id.jwt_ttl.as_secs() as u32,
        x509_ttl_seconds: id.x509_ttl.as_secs() as u32,
        expires_at: id.expires_at.unwrap_or(0),
        enabled: id.enabled,
        retired_at: id.retired_at.unwrap_or(0),
        created_at: id.created_at,
        updated_at: id.updated_at,
        last_issued_at: id.last_issued_at.unwrap_or(0),
        last_seen_at: id.last_seen_at.unwrap_or(0),
        status: view.status.as_str().to_owned(),
        outstanding_credentials: outstanding,
        parent: id
            .parent
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        allow_cidrs: id.allow_cidrs.iter().map(ToString::to_string).collect(),
        require_binding: id.require_binding,
        on_anomaly: id.on_anomaly.as_str().to_owned(),
        reachable_by: selectors::reachable_by(id, attestors),
    }
}

/// Answers with `result`, recording a refusal in the audit log.
fn audited<T>(result: Result<T, Status>, audit: &AuditRecord) -> Result<Response<T>, Status> {
    result
        .map(Response::new)
        .inspect_err(|e| audit.denied(&status::reason(e)))
}

pub(super) fn nonzero_secs(v: u32) -> Option<Duration> {
    (v != 0).then(|| Duration::from_secs(u64::from(v)))
}

impl AdminService {
    /// Unexpired, unrevoked issued credentials per identity (`env/name`).
    async fn outstanding(&self) -> Result<std::collections::HashMap<String, u32>, Status> {
        outstanding::count(&self.broker).await
    }

    /// One identity with its count of outstanding credentials, read for
    /// it alone (counting every identity's cost a read of every credential
    /// outstanding: two million at a million workloads).
    async fn proto_with_count(&self, view: &IdentityView) -> Result<pb::Identity, Status> {
        let n = outstanding::count_of(&self.broker, &view.identity.key).await?;
        Ok(to_proto(view, n, self.broker.attestors.infos()))
    }

    async fn change(
        &self,
        request: Request<ChangeIdentityRequest>,
        change: IdentityChange,
    ) -> Result<Response<pb::Identity>, Status> {
        let mut audit =
            AuditRecord::new(&self.broker.audit, change.action(), request.remote_addr());
        self.require_admin(&request, change.rpc(), &mut audit)?;
        let req = request.into_inner();
        let key = match identity_key(req.identity.as_ref()) {
            Ok(key) => key,
            Err(e) => {
                audit.denied(&status::reason(&e));
                return Err(e);
            }
        };
        let view =
            identity_change::apply(&self.broker, &key, change, &req.reason, &mut audit).await?;
        Ok(Response::new(self.proto_with_count(&view).await?))
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_identity(
        &self,
        request: Request<CreateIdentityRequest>,
    ) -> Result<Response<pb::Identity>, Status> {
        let mut audit =
            AuditRecord::new(&self.broker.audit, "identity.create", request.remote_addr());
        self.require_admin(&request, "CreateIdentity", &mut audit)?;
        let req = request.into_inner();
        if let Err(e) = limits::create_identity(&req) {
            audit.denied(&status::reason(&e));
            return Err(e);
        }
        audit.identity = Some(format!("{}/{}", req.env, req.name));
        audit.env = Some(req.env.clone());
        let now = unix_now();
        let spec = IdentityRequest {
            env: req.env,
            name: req.name,
            owner: req.owner,
            purpose: req.purpose,
            selectors: req
                .selectors
                .into_iter()
                .map(|s| (s.key, s.value))
                .collect(),
            audiences: req.audiences,
            scopes: req.scopes,
            jwt_ttl: nonzero_secs(req.jwt_ttl_seconds),
            x509_ttl: nonzero_secs(req.x509_ttl_seconds),
            expires_at: (req.expires_at != 0).then_some(req.expires_at),
            parent: Some(req.parent),
            allow_cidrs: req.allow_cidrs,
            require_binding: req.require_binding,
            on_anomaly: req.on_anomaly,
        };
        let result = async {
            check_selector_prefixes(&spec.env, &spec.selectors, self.broker.attestors.infos())
                .map_err(status::policy)?;
            let identity =
                validate_new_identity(&spec, &self.broker.envs, &self.broker.limits, now)
                    .map_err(status::policy)?;
            let parent = identity
                .parent
                .as_ref()
                .and_then(|p| self.broker.registry.get(p));
            check_node_rules(&identity, parent.as_deref()).map_err(status::policy)?;
            if let Some(retired_at) = self
                .broker
                .registry
                .get(&identity.key)
                .and_then(|old| old.retired_at)
            {
                // Relying parties authorize by SPIFFE ID: a new workload
                // under a retired name would inherit what they granted the
                // old one, so a retired name is never handed out again.
                return Err(Status::already_exists(format!(
                    "identity {} was retired at {}; a retired name stays reserved so that {} never \
                     names another workload: choose another name",
                    identity.key,
                    crate::model::rfc3339(retired_at),
                    identity.spiffe_id
                )));
            }
            let created = self
                .broker
                .registry
                .create(identity)
                .await
                .map_err(status::store)?;
            Ok(IdentityView {
                status: created.status(now),
                identity: (*created).clone(),
            })
        }
        .await;
        match result {
            Ok(view) => {
                audit.changed(&format!("owner={:?}", view.identity.owner));
                Ok(Response::new(to_proto(
                    &view,
                    0,
                    self.broker.attestors.infos(),
                )))
            }
            Err(e) => {
                audit.denied(&status::reason(&e));
                Err(e)
            }
        }
    }

    async fn get_identity(
        &self,
        request: Request<IdentityRef>,
    ) -> Result<Response<pb::Identity>, Status> {
        let mut audit = AuditRecord::new(&self.broker.audit, "identity.get", request.remote_addr());
        self.require_admin(&request, "GetIdentity", &mut audit)?;
        let key = identity_key(Some(request.get_ref()))?;
        let view = self
            .broker
            .registry
            .view(&key, unix_now())
            .ok_or_else(|| Status::not_found(format!("identity {key} not found")))?;
        Ok(Response::new(self.proto_with_count(&view).await?))
    }

    async fn list_identities(
        &self,
        request: Request<ListIdentitiesRequest>,
    ) -> Result<Response<ListIdentitiesResponse>, Status> {
        let mut audit =
            AuditRecord::new(&self.broker.audit, "identity.list", request.remote_addr());
        self.require_admin(&request, "ListIdentities", &mut audit)?;
        let req = request.into_inner();
        let env = if req.env.is_empty() {
            None
        } else {
            Some(EnvName::new(&req.env).map_err(|e| Status::invalid_argument(e.to_string()))?)
        };
        let owner = (!req.owner.is_empty()).then_some(req.owner.as_str());
        let now = unix_now();
        // Stale: nothing issued within the window (never issued counts as stale
        // once the identity itself is older than the window).
        let cutoff = now - i64::from(req.stale_seconds);
        let counts = self.outstanding().await?;
        let identities = self
            .broker
            .registry
            .list(env.as_ref(), owner, now)
            .iter()
            .filter(|v| {
                req.stale_seconds == 0
                    || v.identity.last_issued_at.unwrap_or(v.identity.created_at) < cutoff
            })
            .map(|v| {
                let n = counts
                    .get(&v.identity.key.to_string())
                    .copied()
                    .unwrap_or(0);
                to_proto(v, n, self.broker.attestors.infos())
            })
            .collect();
        Ok(Response::new(ListIdentitiesResponse { identities }))
    }

    async fn disable_identity(
        &self,
        request: Request<ChangeIdentityRequest>,
    ) -> Result<Response<pb::Identity>, Status> {
        self.change(request, IdentityChange::Disable).await
    }

    async fn enable_identity(
        &self,
        request: Request<ChangeIdentityRequest>,
    ) -> Result<Response<pb::Identity>, Status> {
        self.change(request, IdentityChange::Enable).await
    }

    async fn retire_identity(
        &self,
        request: Request<ChangeIdentityRequest>,
    ) -> Result<Response<pb::Identity>, Status> {
        self.change(request, IdentityChange::Retire).await
    }

    async fn create_join_token(
        &self,
        request: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<CreateJoinTokenResponse>, Status> {
        let mut audit = AuditRecord::new(
            &self.broker.audit,
            "join_token.create",
            request.remote_addr(),
        );
        self.require_admin(&request, "CreateJoinToken", &mut audit)?;
        let result = join_token_api::create(&self.broker, request.into_inner(), &mut audit).await;
        audited(result, &audit)
    }

    async fn query_audit(
        &self,
        request: Request<QueryAuditRequest>,
    ) -> Result<Response<QueryAuditResponse>, Status> {
        let mut audit = AuditRecord::new(&self.broker.audit, "audit.query", request.remote_addr());
        self.require_admin(&request, "QueryAudit", &mut audit)?;
        audit_api::query(&self.broker, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn verify_audit(
        &self,
        request: Request<VerifyAuditRequest>,
    ) -> Result<Response<VerifyAuditResponse>, Status> {
        let mut audit = AuditRecord::new(&self.broker.audit, "audit.verify", request.remote_addr());
        self.require_admin(&request, "VerifyAudit", &mut audit)?;
        let checkpoints = request.into_inner().checkpoints;
        let report = audit_api::verify(&self.broker, checkpoints).await?;
        if report.intact {
            audit.changed(&format!(
                "intact: {} entries, head {}",
                report.entries, report.head
            ));
        } else {
            audit.denied(&format!(
                "chain broken at entry {}: {}",
                report.broken_at, report.problem
            ));
        }
        Ok(Response::new(report))
    }

    async fn verify_audit_export(
        &self,
        request: Request<tonic::Streaming<AuditExportChunk>>,
    ) -> Result<Response<VerifyAuditExportResponse>, Status> {
        let mut audit = AuditRecord::new(
            &self.broker.audit,
            "audit.verify_export",
            request.remote_addr(),
        );
        self.require_admin(&request, "VerifyAuditExport", &mut audit)?;
        let report = audit_api::verify_export(&self.broker, request.into_inner()).await?;
        if report.intact {
            audit.changed(&format!(
                "export intact: entries {}..{}, head {}",
                report.after_seq + 1,
                report.sealed_seq,
                report.head
            ));
        } else {
            audit.denied(&format!(
                "export broken at line {}: {}",
                report.line, report.problem
            ));
        }
        Ok(Response::new(report))
    }

    async fn revoke(
        &self,
        request: Request<RevokeRequest>,
    ) -> Result<Response<pb::Revocation>, Status> {
        let mut audit = AuditRecord::new(&self.broker.audit, "revoke", request.remote_addr());
        self.require_admin(&request, "Revoke", &mut audit)?;
        let result = revoke_api::revoke(&self.broker, request.into_inner(), &mut audit).await;
        audited(result, &audit)
    }

    async fn list_keys(
        &self,
        request: Request<ListKeysRequest>,
    ) -> Result<Response<ListKeysResponse>, Status> {
        let mut audit = AuditRecord::new(&self.broker.audit, "keys.list", request.remote_addr());
        self.require_admin(&request, "ListKeys", &mut audit)?;
        keys_api::list(&self.broker, &request.into_inner().env).map(Response::new)
    }

    async fn rotate_keys(
        &self,
        request: Request<RotateKeysRequest>,
    ) -> Result<Response<ListKeysResponse>, Status> {
        let mut audit = AuditRecord::new(&self.broker.audit, "keys.rotate", request.remote_addr());
        self.require_admin(&request, "RotateKeys", &mut audit)?;
        let req = request.into_inner();
        let result = keys_api::rotate(&self.broker, &req.env, &req.kind, &mut audit).await;
        audited(result, &audit)
    }

    async fn retire_key(
        &self,
        request: Request<RetireKeyRequest>,
    ) -> Result<Response<RetireKeyResponse>, Status> {
        let mut audit = AuditRecord::new(&self.broker.audit, "keys.retire", request.remote_addr());
        self.require_admin(&request, "RetireKey", &mut audit)?;
        let result = keys_api::retire(&self.broker, request.into_inner(), &mut audit).await;
        audited(result, &audit)
    }

    async fn list_revocations(
        &self,
        request: Request<ListRevocationsRequest>,
    ) -> Result<Response<ListRevocationsResponse>, Status> {
        let mut audit = AuditRecord::new(&self.broker.audit, "revoke.list", request.remote_addr());
        self.require_admin(&request, "ListRevocations", &mut audit)?;
        self.broker.revocations.prune(unix_now());
        let revocations = self
            .broker
            .revocations
            .after(0)
            .iter()
            .map(|r| revoke_api::to_proto(r))
            .collect();
        Ok(Response::new(ListRevocationsResponse { revocations }))
    }

    async fn create_operator(
        &self,
        request: Request<CreateOperatorRequest>,
    ) -> Result<Response<CreateOperatorResponse>, Status> {
        let mut audit =
            AuditRecord::new(&self.broker.audit, "operator.create", request.remote_addr());
        let caller = self.require_admin(&request, "CreateOperator", &mut audit)?;
        let result =
            operators_api::create(&self.broker, &caller, request.into_inner(), &audit).await;
        audited(result, &audit)
    }

    async fn list_operators(
        &self,
        request: Request<ListOperatorsRequest>,
    ) -> Result<Response<ListOperatorsResponse>, Status> {
        let mut audit =
            AuditRecord::new(&self.broker.audit, "operator.list", request.remote_addr());
        self.require_admin(&request, "ListOperators", &mut audit)?;
        Ok(Response::new(operators_api::list(
            &self.broker,
            request.into_inner().all,
        )))
    }

    async fn revoke_operator(
        &self,
        request: Request<RevokeOperatorRequest>,
    ) -> Result<Response<RevokeOperatorResponse>, Status> {
        let mut audit =
            AuditRecord::new(&self.broker.audit, "operator.revoke", request.remote_addr());
        let caller = self.require_admin(&request, "RevokeOperator", &mut audit)?;
        let result =
            operators_api::revoke(&self.broker, &caller, request.into_inner(), &audit).await;
        audited(result, &audit)
    }

    async fn create_ui_login(
        &self,
        request: Request<CreateUiLoginRequest>,
    ) -> Result<Response<CreateUiLoginResponse>, Status> {
        let mut audit =
            AuditRecord::new(&self.broker.audit, "ui.login_link", request.remote_addr());
        let caller = self.require_admin(&request, "CreateUiLogin", &mut audit)?;
        let result = crate::ui::login::create_link(&self.broker, &caller, unix_now());
        if let Ok(link) = &result {
            audit.changed(&format!(
                "one-time login link {} for role {}, valid until {}",
                link.id,
                caller.role,
                crate::model::rfc3339(link.expires_at)
            ));
        }
        audited(
            result.map(|link| CreateUiLoginResponse {
                url: link.url,
                expires_at: link.expires_at,
            }),
            &audit,
        )
    }
}
