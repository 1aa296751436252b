//! CreateOperator, ListOperators and RevokeOperator: named operators'
//! certificates, issued from the operator's CSR and signed by the admin CA.

use std::time::Duration;

use credbroker_proto::v1::{
    self as pb, CreateOperatorRequest, CreateOperatorResponse, ListOperatorsResponse,
    RevokeOperatorRequest, RevokeOperatorResponse,
};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    SanType,
};
use tonic::Status;

use super::operators::{OPERATOR_URI_SCHEME, OperatorPeer};
use super::status;
use crate::audit::{AuditEntry, AuditRecord};
use crate::broker::Broker;
use crate::issue::VerifiedCsr;
use crate::keys::{new_serial, pem_encode};
use crate::model::{format_duration, unix_now};
use crate::policy::roles::{Role, check_operator_name};
use crate::store::OperatorRecord;

/// Lifetime of an operator certificate when the request names none.
pub const DEFAULT_OPERATOR_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Shortest lifetime an operator certificate may be given.
pub const MIN_OPERATOR_TTL: Duration = Duration::from_secs(60);
/// Longest lifetime an operator certificate may be given.
pub const MAX_OPERATOR_TTL: Duration = Duration::from_secs(90 * 24 * 60 * 60);

fn invalid(msg: String) -> Status {
    Status::invalid_argument(msg)
}

pub(super) fn to_proto(r: &OperatorRecord, now: i64) -> pb::Operator {
    pb::Operator {
        name: r.name.clone(),
        role: r.role.as_str().to_owned(),
        serial: r.serial.clone(),
        created_at: r.created_at,
        expires_at: r.expires_at,
        created_by: r.created_by.clone(),
        revoked_at: r.revoked_at.unwrap_or(0),
        revoked_by: r.revoked_by.clone().unwrap_or_default(),
        revoke_reason: r.revoke_reason.clone().unwrap_or_default(),
        status: r.status(now).to_owned(),
    }
}

/// Issues operator `req.name` a certificate over its CSR's key.
pub(super) async fn create(
    broker: &Broker,
    caller: &OperatorPeer,
    req: CreateOperatorRequest,
    audit: &AuditRecord,
) -> Result<CreateOperatorResponse, Status> {
    let name = req.name.trim();
    check_operator_name(name).map_err(invalid)?;
    let role = Role::parse(&req.role).map_err(invalid)?;
    let ttl = match req.ttl_seconds {
        0 => DEFAULT_OPERATOR_TTL,
        s => Duration::from_secs(u64::from(s)),
    };
    if !(MIN_OPERATOR_TTL..=MAX_OPERATOR_TTL).contains(&ttl) {
        return Err(invalid(format!(
            "ttl {} is out of bounds: an operator certificate lives from {} to {}",
            format_duration(ttl),
            format_duration(MIN_OPERATOR_TTL),
            format_duration(MAX_OPERATOR_TTL)
        )));
    }
    let csr =
        VerifiedCsr::parse(&req.csr_der).map_err(|e| invalid(format!("operator CSR: {e}")))?;
    let _changes = broker.callers.operators.changes.lock().await;
    let now = unix_now();
    if let Some(live) = broker.callers.operators.live(name, now).first() {
        return Err(Status::already_exists(format!(
            "operator {name} already holds certificate {} (role {}, expires {}): revoke it first \
             with `credbroker operator revoke --name {name}`",
            live.serial,
            live.role,
            crate::model::rfc3339(live.expires_at)
        )));
    }
    let ca = broker.keys.admin_ca().map_err(status::key)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "credbroker");
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let uri = format!("{OPERATOR_URI_SCHEME}{name}");
    params.subject_alt_names =
        vec![SanType::URI(uri.as_str().try_into().map_err(|_| {
            invalid(format!("operator name {name:?} does not make a URI"))
        })?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let start = time::OffsetDateTime::from_unix_timestamp(now)
        .map_err(|e| Status::internal(e.to_string()))?;
    params.not_before = start - time::Duration::minutes(1);
    let expires_at = (now + ttl.as_secs() as i64).min(ca.not_after());
    params.not_after = time::OffsetDateTime::from_unix_timestamp(expires_at)
        .map_err(|e| Status::internal(e.to_string()))?;
    let serial = new_serial().map_err(status::key)?;
    params.serial_number = Some(serial);
    params.use_authority_key_identifier_extension = true;
    let cert = ca.sign(&params, &csr).map_err(status::key)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
        .map_err(|e| Status::internal(format!("issued operator certificate: {e}")))?;
    let record = OperatorRecord {
        serial: crate::keys::serial_of(&parsed),
        name: name.to_owned(),
        role,
        created_at: now,
        expires_at,
        created_by: caller.name.clone(),
        revoked_at: None,
        revoked_by: None,
        revoke_reason: None,
    };
    broker
        .store
        .insert_operator(&record)
        .await
        .map_err(status::store)?;
    broker.callers.operators.put(record.clone());
    // The certificate leaves only once its audit record is durable.
    let detail = format!("operator={name} role={role}");
    let committed = broker
        .audit
        .commit(vec![AuditEntry {
            at_ms: crate::model::unix_now_ms(),
            action: audit.action.to_owned(),
            decision: "done".into(),
            actor: audit.actor.clone(),
            peer: audit.peer.map(|p| p.to_string()),
            credential: Some("operator-cert".into()),
            serial: Some(record.serial.clone()),
            expires_at: Some(expires_at),
            detail: Some(detail.clone()),
            ..AuditEntry::default()
        }])
        .await;
    if let Err(e) = committed {
        let reason = "its audit record did not commit";
        if broker
            .store
            .revoke_operator(&record.serial, now, &caller.name, reason)
            .await
            .is_ok()
        {
            broker.callers.operators.put(OperatorRecord {
                revoked_at: Some(now),
                revoked_by: Some(caller.name.clone()),
                revoke_reason: Some(reason.to_owned()),
                ..record
            });
        }
        return Err(status::audit(e));
    }
    tracing::info!(actor = %caller.name, operator = name, %role, serial = %record.serial, "operator certificate issued");
    let broker_ca = broker
        .keys
        .server_tls()
        .cert_chain
        .last()
        .map(|ca| pem_encode("CERTIFICATE", ca))
        .unwrap_or_default();
    Ok(CreateOperatorResponse {
        operator: Some(to_proto(&record, now)),
        certificate_pem: pem_encode("CERTIFICATE", &cert),
        broker_ca_pem: broker_ca,
    })
}

/// Operator certificates: live ones, or every one with `all`.
pub(super) fn list(broker: &Broker, all: bool) -> ListOperatorsResponse {
    let now = unix_now();
    ListOperatorsResponse {
        operators: broker
            .callers
            .operators
            .list()
            .iter()
            .filter(|r| all || r.status(now) == "active")
            .map(|r| to_proto(r, now))
            .collect(),
    }
}

/// Revokes every unrevoked certificate of operator `req.name`.
pub(super) async fn revoke(
    broker: &Broker,
    caller: &OperatorPeer,
    req: RevokeOperatorRequest,
    audit: &AuditRecord,
) -> Result<RevokeOperatorResponse, Status> {
    let name = req.name.trim();
    check_operator_name(name).map_err(invalid)?;
    let reason = req.reason.trim();
    if reason.is_empty() {
        return Err(invalid("reason is required to revoke an operator".into()));
    }
    let _changes = broker.callers.operators.changes.lock().await;
    let now = unix_now();
    let targets: Vec<_> = broker
        .callers
        .operators
        .list()
        .into_iter()
        .filter(|r| r.name == name && r.revoked_at.is_none())
        .collect();
    if targets.is_empty() {
        return Err(Status::not_found(format!(
            "no operator named {name} holds an unrevoked certificate (see `credbroker operator \
             list --all`)"
        )));
    }
    let mut revoked = Vec::with_capacity(targets.len());
    for r in targets {
        broker
            .store
            .revoke_operator(&r.serial, now, &caller.name, reason)
            .await
            .map_err(status::store)?;
        let updated = OperatorRecord {
            revoked_at: Some(now),
            revoked_by: Some(caller.name.clone()),
            revoke_reason: Some(reason.to_owned()),
            ..(*r).clone()
        };
        broker.callers.operators.put(updated.clone());
        revoked.push(to_proto(&updated, now));
    }
    let serials: Vec<&str> = revoked.iter().map(|r| r.serial.as_str()).collect();
    audit.changed(&format!(
        "operator={name} serials={} reason={reason:?}",
        serials.join(",")
    ));
    Ok(RevokeOperatorResponse { revoked })
}
