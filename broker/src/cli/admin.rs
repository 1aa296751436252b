//! Admin commands: one gRPC call each, authenticated with the admin client
//! certificate from the data directory, or a named operator's (`--operator`).

use std::path::Path;

use credbroker_proto::v1::admin_client::AdminClient;
use credbroker_proto::v1::{
    ChangeIdentityRequest, CreateIdentityRequest, CreateJoinTokenRequest, IdentityRef,
    ListIdentitiesRequest, ListRevocationsRequest, QueryAuditRequest, RevokeRequest, Selector,
    VerifyAuditRequest, revoke_request,
};
use tonic::transport::Channel;

use super::output::{
    print_audit, print_identities, print_identity, print_revocations, print_token,
    print_verification,
};
use super::{
    AuditArgs, AuditCommand, Cli, Command, IdentityArgs, IdentityCommand, RevokeArgs, TokenCommand,
};
use crate::keys::AdminFiles;

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A local file is missing or unreadable.
    #[error("cannot read {path}: {source} ({})", file_hint(.source))]
    File {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Could not connect to any broker (the message names the cause).
    #[error("{0}")]
    Connect(credbroker_client::ClientError),
    /// The broker refused or failed.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Rpc(#[from] tonic::Status),
    /// Output could not be written.
    #[error("{0}")]
    Output(String),
}

/// What to try when the admin credentials cannot be read.
fn file_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        // A systemd-installed broker's data directory belongs to its user.
        "run the command as the broker's user, e.g. sudo -u credbroker credbroker --data-dir /var/lib/credbroker …"
    } else {
        "is --data-dir the broker's data directory?"
    }
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

fn read(path: &Path) -> Result<Vec<u8>, AdminError> {
    std::fs::read(path).map_err(|source| AdminError::File {
        path: path.display().to_string(),
        source,
    })
}

/// Reads a named operator's files from `dir` (`--operator`).
fn read_operator(dir: &Path) -> Result<[Vec<u8>; 3], AdminError> {
    use super::operator::{OPERATOR_BUNDLE, OPERATOR_CERT, OPERATOR_KEY};
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read(&path).map_err(|e| {
            AdminError::Output(format!(
                "cannot read {}: {e} (is --operator a directory written by `credbroker operator create`?)",
                path.display()
            ))
        })
    };
    Ok([
        read(OPERATOR_BUNDLE)?,
        read(OPERATOR_CERT)?,
        read(OPERATOR_KEY)?,
    ])
}

/// Connects to the first broker of `urls` that accepts the admin's TLS
/// connection, in order (saying on stderr which failed). Moving on is safe
/// only before anything is sent, so a broker that fails mid-command is
/// reported, not retried elsewhere: `token create` or `identity create`
/// must not run twice.
async fn connect(
    urls: &[String],
    data_dir: &Path,
    operator: Option<&Path>,
) -> Result<AdminClient<Channel>, AdminError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let brokers = credbroker_client::Brokers::new(urls)
        .map_err(|e| AdminError::Output(format!("--broker: {e}")))?
        // Admin calls can be long (`audit verify` over a large log): only
        // a broker that hangs is cut off.
        .rpc_timeout(std::time::Duration::from_secs(3600));
    let [ca, cert, key] = match operator {
        Some(dir) => read_operator(dir)?,
        None => {
            let files = AdminFiles::locate(data_dir);
            [
                read(&data_dir.join("broker-ca.pem"))?,
                read(&files.cert)?,
                read(&files.key)?,
            ]
        }
    };
    let tls = credbroker_client::BrokerTls::new(&ca)
        .and_then(|tls| tls.with_client_pem(&cert, &key))
        .map_err(AdminError::Connect)?;
    let channel = brokers
        .connect_first(&tls)
        .await
        .map_err(AdminError::Connect)?;
    Ok(AdminClient::new(channel))
}

fn identity_ref(id: &IdentityArgs) -> IdentityRef {
    IdentityRef {
        env: id.env.clone(),
        name: id.name.clone(),
    }
}

fn change(id: &IdentityArgs, reason: &str) -> ChangeIdentityRequest {
    ChangeIdentityRequest {
        identity: Some(identity_ref(id)),
        reason: reason.to_owned(),
    }
}

fn secs(d: Option<std::time::Duration>) -> u32 {
    d.map(|d| d.as_secs().min(u64::from(u32::MAX)) as u32)
        .unwrap_or(0)
}

/// Runs an admin command (anything but `serve`).
pub async fn run_admin(cli: &Cli) -> Result<(), AdminError> {
    let data_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(|| "./credbroker-data".into());
    let mut client = connect(&cli.broker, &data_dir, cli.operator.as_deref()).await?;
    let out = cli.output;
    match &cli.command {
        Command::Serve { .. } | Command::Backup { .. } | Command::Completions { .. } => Err(
            AdminError::Output("serve and backup run locally, not as admin commands".into()),
        ),
        Command::Identity(cmd) => match cmd {
            IdentityCommand::Create {
                id,
                owner,
                purpose,
                audiences,
                scopes,
                selectors,
                parent,
                allow_cidrs,
                require_binding,
                on_anomaly,
                jwt_ttl,
                x509_ttl,
                expires_at,
            } => {
                let created = client
                    .create_identity(CreateIdentityRequest {
                        env: id.env.clone(),
                        name: id.name.clone(),
                        owner: owner.clone(),
                        purpose: purpose.clone(),
                        selectors: selectors
                            .iter()
                            .map(|(key, value)| Selector {
                                key: key.clone(),
                                value: value.clone(),
                            })
                            .collect(),
                        audiences: audiences.clone(),
                        scopes: scopes.clone(),
                        jwt_ttl_seconds: secs(*jwt_ttl),
                        x509_ttl_seconds: secs(*x509_ttl),
                        expires_at: expires_at.unwrap_or(0),
                        parent: parent.clone().unwrap_or_default(),
                        allow_cidrs: allow_cidrs.clone(),
                        require_binding: *require_binding,
                        on_anomaly: on_anomaly.as_str().to_owned(),
                    })
                    .await?
                    .into_inner();
                print_identity(&created, out)
            }
            IdentityCommand::List { env, owner, stale } => {
                let list = client
                    .list_identities(ListIdentitiesRequest {
                        env: env.clone().unwrap_or_default(),
                        owner: owner.clone().unwrap_or_default(),
                        stale_seconds: secs(*stale),
                    })
                    .await?
                    .into_inner();
                print_identities(&list.identities, out)
            }
            IdentityCommand::Show { id } => {
                let shown = client.get_identity(identity_ref(id)).await?.into_inner();
                print_identity(&shown, out)
            }
            IdentityCommand::Disable { id, reason } => {
                let changed = client
                    .disable_identity(change(id, reason))
                    .await?
                    .into_inner();
                print_identity(&changed, out)
            }
            IdentityCommand::Enable { id, reason } => {
                let changed = client
                    .enable_identity(change(id, reason))
                    .await?
                    .into_inner();
                print_identity(&changed, out)
            }
            IdentityCommand::Retire { id, reason } => {
                let changed = client
                    .retire_identity(change(id, reason))
                    .await?
                    .into_inner();
                print_identity(&changed, out)?;
                eprintln!(
                    "identity {}/{} is retired for good: it cannot be re-enabled, and its name stays \
                     reserved (identity create refuses it), so {} never names another workload",
                    changed.env, changed.name, changed.spiffe_id
                );
                Ok(())
            }
        },
        Command::Audit(AuditArgs {
            command: Some(AuditCommand::Verify { export, .. }),
            ..
        }) if !export.is_empty() => {
            super::audit_export::verify_exports(&mut client, export, out).await
        }
        Command::Audit(AuditArgs {
            command: Some(AuditCommand::Verify { checkpoint, .. }),
            ..
        }) => {
            let checkpoints = match checkpoint {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|e| {
                        AdminError::Output(format!(
                            "cannot read checkpoint file {}: {e}",
                            path.display()
                        ))
                    })?
                    .lines()
                    .map(str::to_owned)
                    .collect(),
                None => vec![],
            };
            let report = client
                .verify_audit(VerifyAuditRequest { checkpoints })
                .await?
                .into_inner();
            print_verification(&report, out)?;
            if report.intact {
                Ok(())
            } else {
                Err(AdminError::Output(format!(
                    "audit log chain is broken at entry {}",
                    report.broken_at
                )))
            }
        }
        Command::Revoke(RevokeArgs { list: true, .. }) => {
            let list = client
                .list_revocations(ListRevocationsRequest {})
                .await?
                .into_inner();
            print_revocations(&list.revocations, out)
        }
        Command::Revoke(args) => {
            let target = if let Some(j) = &args.jti {
                revoke_request::Target::Jti(j.clone())
            } else if let Some(s) = &args.serial {
                revoke_request::Target::Serial(s.clone())
            } else if let Some(id) = &args.identity {
                let (env, name) = id.split_once('/').ok_or_else(|| {
                    AdminError::Output(format!("--identity {id:?} must be ENV/NAME"))
                })?;
                revoke_request::Target::Identity(IdentityRef {
                    env: env.to_owned(),
                    name: name.to_owned(),
                })
            } else if let Some(e) = &args.env {
                revoke_request::Target::Env(e.clone())
            } else if let Some(o) = &args.owner {
                revoke_request::Target::Owner(o.clone())
            } else {
                return Err(AdminError::Output("nothing to revoke".into()));
            };
            let revoked = client
                .revoke(RevokeRequest {
                    target: Some(target),
                    reason: args.reason.clone().unwrap_or_default(),
                })
                .await?
                .into_inner();
            print_revocations(std::slice::from_ref(&revoked), out)
        }
        Command::Audit(args) => {
            let events = client
                .query_audit(QueryAuditRequest {
                    identity: args.identity.clone().unwrap_or_default(),
                    jti: args.jti.clone().unwrap_or_default(),
                    serial: args.serial.clone().unwrap_or_default(),
                    actor: args.actor.clone().unwrap_or_default(),
                    env: args.env.clone().unwrap_or_default(),
                    since_ms: args.since.unwrap_or(0),
                    until_ms: args.until.unwrap_or(0),
                    limit: args.limit,
                })
                .await?
                .into_inner();
            print_audit(&events.events, out)
        }
        Command::Keys(command) => super::keys::run(&mut client, command, out).await,
        Command::Operator(command) => super::operator::run(&mut client, command, out).await,
        Command::Ui => {
            let login = client
                .create_ui_login(credbroker_proto::v1::CreateUiLoginRequest {})
                .await?
                .into_inner();
            // The link is a secret until used: it goes to stdout only, last.
            println!(
                "Open this link in a browser to sign in to the credbroker inventory \
                 (single use, valid until {}):",
                crate::model::rfc3339(login.expires_at)
            );
            println!("{}", login.url);
            Ok(())
        }
        Command::Token(TokenCommand::Create { id, ttl, uses }) => {
            let token = client
                .create_join_token(CreateJoinTokenRequest {
                    identity: Some(identity_ref(id)),
                    ttl_seconds: secs(*ttl),
                    uses: *uses,
                })
                .await?
                .into_inner();
            print_token(&token, out)
        }
    }
}
