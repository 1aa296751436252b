//! Operator roles and what each Admin RPC needs.
//!
//! Roles are ordered: an `auditor` reads, an `operator` also acts on
//! identities and credentials day to day, an `admin` does everything,
//! including keys and operators. [`ADMIN_RPC_ROLES`] is the one table that
//! decides; an RPC missing from it needs `admin` (fail closed).

use std::fmt;

/// What a named operator may do, least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads: identities, audit log, revocations, keys.
    Auditor,
    /// Also disables/enables identities, revokes, creates join tokens.
    Operator,
    /// Everything: creates and retires identities, rotates and retires
    /// keys, manages operators.
    Admin,
}

impl Role {
    /// Every role, least first.
    pub const ALL: [Role; 3] = [Role::Auditor, Role::Operator, Role::Admin];

    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auditor => "auditor",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    /// Parses `admin`, `operator` or `auditor`.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == text.trim())
            .ok_or_else(|| format!("role {text:?} is not one of admin, operator, auditor"))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Each `credbroker.v1.Admin` RPC and the least role that may call it.
pub const ADMIN_RPC_ROLES: &[(&str, Role)] = &[
    ("GetIdentity", Role::Auditor),
    ("ListIdentities", Role::Auditor),
    ("QueryAudit", Role::Auditor),
    ("VerifyAudit", Role::Auditor),
    ("VerifyAuditExport", Role::Auditor),
    ("ListRevocations", Role::Auditor),
    ("ListKeys", Role::Auditor),
    // The session carries the caller's own role: logging in grants nothing more.
    ("CreateUiLogin", Role::Auditor),
    ("DisableIdentity", Role::Operator),
    ("EnableIdentity", Role::Operator),
    ("Revoke", Role::Operator),
    ("CreateJoinToken", Role::Operator),
    ("CreateIdentity", Role::Admin),
    ("RetireIdentity", Role::Admin),
    ("RotateKeys", Role::Admin),
    ("RetireKey", Role::Admin),
    ("CreateOperator", Role::Admin),
    ("ListOperators", Role::Admin),
    ("RevokeOperator", Role::Admin),
];

/// The least role that may call Admin RPC `rpc`; `admin` for any RPC not
/// in the table.
pub fn required_role(rpc: &str) -> Role {
    ADMIN_RPC_ROLES
        .iter()
        .find(|(name, _)| *name == rpc)
        .map_or(Role::Admin, |(_, role)| *role)
}

/// Validates an operator's name: lower-case letters, digits, `-`, `_` and
/// `.`, 1 to 64 characters, starting with a letter or digit; `admin` (the
/// bootstrap admin's audit actor) and `anonymous` are reserved.
pub fn check_operator_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c);
    if name.is_empty() || name.len() > 64 {
        return Err(format!(
            "operator name {name:?} must be 1 to 64 characters long"
        ));
    }
    if !name.chars().all(ok_char) || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "operator name {name:?} may hold only lower-case letters, digits, '-', '_' and '.', \
             and must start with a letter or digit"
        ));
    }
    if ["admin", "anonymous"].contains(&name) {
        return Err(format!(
            "operator name {name:?} is reserved (the bootstrap admin's and unauthenticated \
             callers' audit actor): choose another"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_admin_rpc_has_a_role() {
        let proto = include_str!("../../../proto/credbroker/v1/admin.proto");
        let rpcs: Vec<&str> = proto
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .filter_map(|l| l.split('(').next())
            .collect();
        assert!(rpcs.len() >= 18, "{rpcs:?}");
        for rpc in &rpcs {
            assert!(
                ADMIN_RPC_ROLES.iter().any(|(name, _)| name == rpc),
                "{rpc} has no role in ADMIN_RPC_ROLES"
            );
        }
        assert_eq!(ADMIN_RPC_ROLES.len(), rpcs.len());
    }

    #[test]
    fn roles_are_ordered_and_unknown_rpcs_need_admin() {
        assert!(Role::Auditor < Role::Operator && Role::Operator < Role::Admin);
        assert_eq!(required_role("Revoke"), Role::Operator);
        assert_eq!(required_role("NoSuchRpc"), Role::Admin);
        assert_eq!(Role::parse("auditor"), Ok(Role::Auditor));
        assert!(
            Role::parse("root")
                .unwrap_err()
                .contains("admin, operator, auditor")
        );
    }

    #[test]
    fn operator_names_are_checked() {
        assert!(check_operator_name("alice").is_ok());
        assert!(check_operator_name("ops-1.bob_x").is_ok());
        for bad in [
            "",
            "Alice",
            "a/b",
            "-x",
            "admin",
            "anonymous",
            &"a".repeat(65),
        ] {
            assert!(check_operator_name(bad).is_err(), "{bad:?}");
        }
    }
}
