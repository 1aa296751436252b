//! Named operators as the admin API sees them: the certificates the broker
//! issued to operators, in memory (loaded at start, changed by
//! CreateOperator and RevokeOperator), checked on every admin call.
//!
//! An operator certificate is signed by the admin CA and names its operator
//! in one URI SAN, `credbroker-operator://NAME` (also its CN). Its role is
//! not in the certificate: it is the stored record's, found by the
//! certificate's serial. So a revoked certificate is refused at the next
//! call, even on a connection opened before, and revoking a name then
//! creating it again does not revive the old certificate (new serial).

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::Mutex;
use tonic::Status;
use x509_parser::certificate::X509Certificate;

use crate::model::rfc3339;
use crate::policy::roles::Role;
use crate::store::OperatorRecord;

/// The URI scheme that names an operator in its certificate.
pub const OPERATOR_URI_SCHEME: &str = "credbroker-operator://";

/// An authenticated caller of the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorPeer {
    /// Its name: the audit actor (`admin` for the bootstrap admin).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Its certificate's serial; `None` for the bootstrap admin.
    pub serial: Option<String>,
}

impl OperatorPeer {
    /// The bootstrap admin (`DATA_DIR/admin/`): role `admin`, actor `admin`.
    pub fn bootstrap() -> Self {
        Self {
            name: "admin".to_owned(),
            role: Role::Admin,
            serial: None,
        }
    }
}

/// The operator named by `cert`'s `credbroker-operator://` URI SAN, if it
/// has one; an error if it names one badly or more than one.
pub(crate) fn operator_name(cert: &X509Certificate<'_>) -> Result<Option<String>, String> {
    let names: Vec<&str> = credbroker_client::uri_sans(cert)
        .into_iter()
        .filter_map(|uri| uri.strip_prefix(OPERATOR_URI_SCHEME))
        .collect();
    match names.as_slice() {
        [] => Ok(None),
        [name] => crate::policy::roles::check_operator_name(name)
            .map(|()| Some((*name).to_owned()))
            .map_err(|e| format!("operator certificate: {e}")),
        _ => Err("operator certificate names more than one operator".to_owned()),
    }
}

/// Every operator certificate, by serial.
#[derive(Debug, Default)]
pub struct OperatorRegistry {
    by_serial: DashMap<String, Arc<OperatorRecord>>,
    /// Serialises create and revoke, so a name never gets two live
    /// certificates.
    pub(crate) changes: Mutex<()>,
}

impl OperatorRegistry {
    /// Replaces the registry's content with `records`.
    pub fn load(&self, records: Vec<OperatorRecord>) {
        self.by_serial.clear();
        for r in records {
            self.by_serial.insert(r.serial.clone(), Arc::new(r));
        }
    }

    /// Adds or replaces one record (after the store has it).
    pub fn put(&self, record: OperatorRecord) {
        self.by_serial
            .insert(record.serial.clone(), Arc::new(record));
    }

    /// Every record, by name then age.
    pub fn list(&self) -> Vec<Arc<OperatorRecord>> {
        let mut all: Vec<_> = self
            .by_serial
            .iter()
            .map(|e| Arc::clone(e.value()))
            .collect();
        all.sort_by(|a, b| (&a.name, a.created_at).cmp(&(&b.name, b.created_at)));
        all
    }

    /// The unrevoked, unexpired certificates of `name` at `now`.
    pub fn live(&self, name: &str, now: i64) -> Vec<Arc<OperatorRecord>> {
        self.list()
            .into_iter()
            .filter(|r| r.name == name && r.status(now) == "active")
            .collect()
    }

    /// Checks, at every call, that the certificate `serial` naming `name`
    /// is on record for that name and not revoked; returns who it is.
    pub fn authenticate(&self, name: &str, serial: &str, now: i64) -> Result<OperatorPeer, Status> {
        let Some(record) = self.by_serial.get(serial).map(|r| Arc::clone(r.value())) else {
            return Err(Status::unauthenticated(format!(
                "operator certificate {serial} ({name}) was not issued by this broker's \
                 operator create"
            )));
        };
        if record.name != name {
            return Err(Status::unauthenticated(format!(
                "operator certificate {serial} names {name}, but was issued to {}",
                record.name
            )));
        }
        if let Some(at) = record.revoked_at {
            return Err(Status::unauthenticated(format!(
                "operator {name}'s certificate {serial} was revoked at {}: {}",
                rfc3339(at),
                record.revoke_reason.as_deref().unwrap_or("no reason given")
            )));
        }
        if now >= record.expires_at {
            return Err(Status::unauthenticated(format!(
                "operator {name}'s certificate {serial} expired at {}",
                rfc3339(record.expires_at)
            )));
        }
        Ok(OperatorPeer {
            name: record.name.clone(),
            role: record.role,
            serial: Some(record.serial.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(serial: &str, name: &str) -> OperatorRecord {
        OperatorRecord {
            serial: serial.into(),
            name: name.into(),
            role: Role::Operator,
            created_at: 100,
            expires_at: 1_000,
            created_by: "admin".into(),
            revoked_at: None,
            revoked_by: None,
            revoke_reason: None,
        }
    }

    #[test]
    fn revocation_and_serial_binding_are_checked_at_every_call() {
        let reg = OperatorRegistry::default();
        reg.load(vec![record("AA", "alice")]);
        assert_eq!(
            reg.authenticate("alice", "AA", 200).unwrap().role,
            Role::Operator
        );
        assert!(reg.authenticate("bob", "AA", 200).is_err());
        assert!(reg.authenticate("alice", "BB", 200).is_err());
        assert!(reg.authenticate("alice", "AA", 1_000).is_err());
        let mut revoked = record("AA", "alice");
        revoked.revoked_at = Some(300);
        reg.put(revoked);
        reg.put(record("CC", "alice"));
        let err = reg.authenticate("alice", "AA", 400).unwrap_err();
        assert!(err.message().contains("revoked"), "{err}");
        assert!(reg.authenticate("alice", "CC", 400).is_ok());
        assert_eq!(reg.live("alice", 400).len(), 1);
    }
}
