//! `credbroker keys list|rotate|retire`: the rotating keys of each
//! environment, and the operator's hand on their schedule.

use clap::Subcommand;
use credbroker_proto::v1::admin_client::AdminClient;
use credbroker_proto::v1::{KeyInfo, ListKeysRequest, RetireKeyRequest, RotateKeysRequest};
use serde_json::{Value, json};
use tonic::transport::Channel;

use super::Output;
use super::admin::AdminError;
use super::output::{emit, json_text, table, time, time_text};

/// `credbroker keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Each CA and JWT key with its state (prepared, active, previous,
    /// retired) and schedule.
    List {
        /// Only this environment.
        #[arg(long)]
        env: Option<String>,
    },
    /// Prepare and activate new keys now; the current ones become previous
    /// and stay published until what they signed has expired.
    Rotate {
        /// Environment (not with `--kind admin`).
        #[arg(long, required_unless_present = "kind")]
        env: Option<String>,
        /// Only this kind: x509 (the environment's CA) or jwt; both without
        /// it. `admin`: the broker-wide admin CA signing operator
        /// certificates.
        #[arg(long, value_parser = ["x509", "jwt", "admin"])]
        kind: Option<String>,
    },
    /// Retire a key (compromise): it stops signing at once, everything it
    /// signed is revoked, and workloads get credentials from the new key.
    Retire {
        /// Environment.
        #[arg(long)]
        env: String,
        /// The key's id, as `keys list` shows it. A JWT key's id is
        /// base64url and may start with `-`.
        #[arg(long = "key", allow_hyphen_values = true)]
        id: String,
        /// Why (recorded in the audit log and the revocation).
        #[arg(long)]
        reason: String,
        /// Take it out of the published key sets now, instead of once what
        /// it signed has expired.
        #[arg(long)]
        now: bool,
    },
}

/// Runs one keys command.
pub async fn run(
    client: &mut AdminClient<Channel>,
    command: &KeysCommand,
    out: Output,
) -> Result<(), AdminError> {
    match command {
        KeysCommand::List { env } => {
            let keys = client
                .list_keys(ListKeysRequest {
                    env: env.clone().unwrap_or_default(),
                })
                .await?
                .into_inner()
                .keys;
            print_keys(&keys, out)
        }
        KeysCommand::Rotate { env, kind } => {
            let keys = client
                .rotate_keys(RotateKeysRequest {
                    env: env.clone().unwrap_or_default(),
                    kind: kind.clone().unwrap_or_default(),
                })
                .await?
                .into_inner()
                .keys;
            print_keys(&keys, out)
        }
        KeysCommand::Retire {
            env,
            id,
            reason,
            now,
        } => {
            let answer = client
                .retire_key(RetireKeyRequest {
                    env: env.clone(),
                    id: id.clone(),
                    reason: reason.clone(),
                    now: *now,
                })
                .await?
                .into_inner();
            if out == Output::Json {
                return emit(&json_text(&json!({
                    "key": answer.key.as_ref().map(key_json),
                    "replaced_by": (!answer.replaced_by.is_empty()).then_some(&answer.replaced_by),
                    "revocation_seq": answer.revocation.as_ref().map(|r| r.seq),
                })));
            }
            let mut text = format!("retired key {id}: it signs nothing more");
            if !answer.replaced_by.is_empty() {
                text.push_str(&format!("; {} signs in its place", answer.replaced_by));
            }
            if let Some(rev) = &answer.revocation {
                text.push_str(&format!(
                    "\neverything it signed is revoked (revocation {}, until {})",
                    rev.seq,
                    time_text(rev.covers_until)
                ));
            }
            if let Some(key) = &answer.key {
                text.push_str(&format!(
                    "\nit leaves the published key sets at {}",
                    time_text(key.unpublish_at)
                ));
            }
            emit(&text)
        }
    }
}

fn key_json(k: &KeyInfo) -> Value {
    json!({
        "env": k.env,
        "kind": k.kind,
        "id": k.id,
        "state": k.state,
        "created_at": time(k.created_at),
        "activates_at": time(k.activates_at),
        "unpublish_at": time(k.unpublish_at),
        "not_after": time(k.not_after),
        "retire_reason": (!k.retire_reason.is_empty()).then_some(&k.retire_reason),
    })
}

fn print_keys(keys: &[KeyInfo], out: Output) -> Result<(), AdminError> {
    if out == Output::Json {
        return emit(&json_text(&Value::Array(
            keys.iter().map(key_json).collect(),
        )));
    }
    let header = [
        "ENV",
        "KIND",
        "ID",
        "STATE",
        "CREATED",
        "SIGNS FROM",
        "PUBLISHED UNTIL",
        "EXPIRES",
    ];
    let rows: Vec<[String; 8]> = keys
        .iter()
        .map(|k| {
            [
                k.env.clone(),
                k.kind.clone(),
                k.id.clone(),
                k.state.clone(),
                time_text(k.created_at),
                time_text(k.activates_at),
                time_text(k.unpublish_at),
                time_text(k.not_after),
            ]
        })
        .collect();
    emit(&table(&header, &rows))
}
