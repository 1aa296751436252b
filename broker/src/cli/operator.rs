//! `credbroker operator create|list|revoke`: named operators with roles.
//!
//! `create` makes the operator's key here and sends the broker only a CSR:
//! the private key never leaves this machine. It writes `operator.pem`,
//! `operator.key` (0600) and `broker-ca.pem` into `--out-dir`, which every
//! admin command then takes as `--operator DIR`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use credbroker_proto::v1::admin_client::AdminClient;
use credbroker_proto::v1::{
    CreateOperatorRequest, ListOperatorsRequest, Operator, RevokeOperatorRequest,
};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use serde_json::{Value, json};
use tonic::transport::Channel;

use super::Output;
use super::admin::AdminError;
use super::output::{emit, json_text, table, time, time_text};

/// Files an operator directory holds.
pub const OPERATOR_CERT: &str = "operator.pem";
/// The operator's private key (0600).
pub const OPERATOR_KEY: &str = "operator.key";
/// The CA of the broker's TLS certificate.
pub const OPERATOR_BUNDLE: &str = "broker-ca.pem";

/// `credbroker operator …`
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Issue a named operator a client certificate (key made here, never
    /// sent); admin role needed.
    Create {
        /// The operator's name (lower-case letters, digits, - _ .).
        #[arg(long)]
        name: String,
        /// What it may do: auditor (read), operator (also disable, revoke,
        /// join tokens), admin (everything).
        #[arg(long, value_parser = ["admin", "operator", "auditor"])]
        role: String,
        /// Certificate lifetime (1m to 90d).
        #[arg(long, value_parser = super::parse_duration, default_value = "24h")]
        ttl: Duration,
        /// Directory to write operator.pem, operator.key and broker-ca.pem
        /// into (created 0700; must not hold an operator already).
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
    },
    /// Named operators' certificates.
    List {
        /// Also revoked and expired ones.
        #[arg(long)]
        all: bool,
    },
    /// Revoke an operator's certificate: refused from its next call on.
    Revoke {
        /// The operator's name.
        #[arg(long)]
        name: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
}

fn io_error(path: &Path, e: std::io::Error) -> AdminError {
    AdminError::Output(format!("cannot write {}: {e}", path.display()))
}

/// Refuses an out-dir that already holds an operator, before anything is
/// asked of the broker.
fn check_out_dir(dir: &Path) -> Result<(), AdminError> {
    for file in [OPERATOR_CERT, OPERATOR_KEY] {
        let path = dir.join(file);
        if path.exists() {
            return Err(AdminError::Output(format!(
                "--out-dir {}: {} exists already; choose an empty directory (nothing was changed)",
                dir.display(),
                path.display()
            )));
        }
    }
    Ok(())
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), AdminError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| io_error(path, e))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error(path, e))
}

fn operator_json(o: &Operator) -> Value {
    json!({
        "name": o.name,
        "role": o.role,
        "serial": o.serial,
        "status": o.status,
        "created_at": time(o.created_at),
        "created_by": o.created_by,
        "expires_at": time(o.expires_at),
        "revoked_at": time(o.revoked_at),
        "revoked_by": (!o.revoked_by.is_empty()).then_some(&o.revoked_by),
        "revoke_reason": (!o.revoke_reason.is_empty()).then_some(&o.revoke_reason),
    })
}

fn print_operators(ops: &[Operator], out: Output) -> Result<(), AdminError> {
    if out == Output::Json {
        return emit(&json_text(&Value::Array(
            ops.iter().map(operator_json).collect(),
        )));
    }
    let header = [
        "NAME", "ROLE", "STATUS", "SERIAL", "CREATED", "BY", "EXPIRES", "REVOKED",
    ];
    let rows: Vec<[String; 8]> = ops
        .iter()
        .map(|o| {
            [
                o.name.clone(),
                o.role.clone(),
                o.status.clone(),
                o.serial.clone(),
                time_text(o.created_at),
                o.created_by.clone(),
                time_text(o.expires_at),
                time_text(o.revoked_at),
            ]
        })
        .collect();
    emit(&table(&header, &rows))
}

/// Runs one operator command.
pub async fn run(
    client: &mut AdminClient<Channel>,
    command: &OperatorCommand,
    out: Output,
) -> Result<(), AdminError> {
    match command {
        OperatorCommand::Create {
            name,
            role,
            ttl,
            out_dir,
        } => {
            check_out_dir(out_dir)?;
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                .map_err(|e| AdminError::Output(format!("cannot make a key: {e}")))?;
            let csr = CertificateParams::default()
                .serialize_request(&key)
                .map_err(|e| AdminError::Output(format!("cannot make a CSR: {e}")))?;
            // The directory must be writable before the broker is asked: a
            // certificate whose key could not be saved would hold the name.
            let made_dir = !out_dir.exists();
            {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(out_dir)
                    .map_err(|e| io_error(out_dir, e))?;
            }
            let created = client
                .create_operator(CreateOperatorRequest {
                    name: name.clone(),
                    role: role.clone(),
                    ttl_seconds: ttl.as_secs().min(u64::from(u32::MAX)) as u32,
                    csr_der: csr.der().to_vec(),
                })
                .await;
            let created = match created {
                Ok(created) => created.into_inner(),
                Err(e) => {
                    if made_dir {
                        let _ = std::fs::remove_dir(out_dir);
                    }
                    return Err(e.into());
                }
            };
            let op = created.operator.clone().unwrap_or_default();
            let bundle = out_dir.join(OPERATOR_BUNDLE);
            let written = write_new(
                &out_dir.join(OPERATOR_KEY),
                key.serialize_pem().as_bytes(),
                0o600,
            )
            .and_then(|()| {
                write_new(
                    &out_dir.join(OPERATOR_CERT),
                    created.certificate_pem.as_bytes(),
                    0o644,
                )
            })
            .and_then(|()| {
                std::fs::write(&bundle, created.broker_ca_pem.as_bytes())
                    .map_err(|e| io_error(&bundle, e))
            });
            if let Err(e) = written {
                return Err(AdminError::Output(format!(
                    "{e}; the broker issued certificate {} to operator {}: revoke it with \
                     `credbroker operator revoke --name {} --reason \"files not written\"`",
                    op.serial, op.name, op.name
                )));
            }
            if out == Output::Json {
                return emit(&json_text(&operator_json(&op)));
            }
            emit(&format!(
                "operator {} ({}) created, serial {}, expires {}\nwrote {}, {} and {}: pass --operator {} (or set CREDBROKER_OPERATOR)",
                op.name,
                op.role,
                op.serial,
                time_text(op.expires_at),
                out_dir.join(OPERATOR_CERT).display(),
                out_dir.join(OPERATOR_KEY).display(),
                bundle.display(),
                out_dir.display()
            ))
        }
        OperatorCommand::List { all } => {
            let list = client
                .list_operators(ListOperatorsRequest { all: *all })
                .await?
                .into_inner();
            print_operators(&list.operators, out)
        }
        OperatorCommand::Revoke { name, reason } => {
            let revoked = client
                .revoke_operator(RevokeOperatorRequest {
                    name: name.clone(),
                    reason: reason.clone(),
                })
                .await?
                .into_inner();
            print_operators(&revoked.revoked, out)
        }
    }
}
