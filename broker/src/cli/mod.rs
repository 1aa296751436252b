//! The `credbroker` command line: `serve`, and the admin commands that talk
//! to a running broker over gRPC with the admin client certificate.

mod admin;
mod audit_export;
pub mod backup;
mod keys;
mod operator;
mod output;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

pub use admin::run_admin;

/// Commands that run here rather than talk to a broker: `--broker` and
/// `--output` mean nothing to them, so their help leaves those out.
const LOCAL_COMMANDS: [&str; 3] = ["serve", "backup", "completions"];

/// The command line, with the admin-only global flags hidden from the help
/// of the local commands (`serve`, `backup`).
pub fn command() -> clap::Command {
    let cmd = Cli::command();
    // A subcommand that already has an argument of a global's id does not
    // get the global pushed in; so give the local commands hidden copies.
    let hidden: Vec<clap::Arg> = cmd
        .get_arguments()
        .filter(|a| ["broker", "output", "operator"].contains(&a.get_id().as_str()))
        .map(|a| a.clone().hide(true))
        .collect();
    LOCAL_COMMANDS.iter().fold(cmd, |cmd, local| {
        cmd.mut_subcommand(local, |sub| sub.args(hidden.clone()))
    })
}

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    clap_complete::generate(shell, &mut command(), "credbroker", out);
}

/// Parses the process's arguments (exiting with clap's message on error).
pub fn parse() -> Cli {
    Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit())
}

/// credbroker: short-lived workload credentials.
#[derive(Debug, Parser)]
#[command(name = "credbroker", version, about)]
pub struct Cli {
    /// Data directory: the broker's state when serving; where admin commands
    /// find `admin/` and `broker-ca.pem`. [default: ./credbroker-data]
    #[arg(long, global = true, env = "CREDBROKER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Admin commands authenticate as this named operator: a directory
    /// written by `operator create` (operator.pem, operator.key,
    /// broker-ca.pem), used instead of the data directory's admin files.
    #[arg(long, global = true, env = "CREDBROKER_OPERATOR", value_name = "DIR")]
    pub operator: Option<PathBuf>,
    /// Broker gRPC URL for admin commands. Replicas: repeat the flag or
    /// separate URLs with commas; the first that accepts the connection
    /// is used (a command is sent once, never to a second broker).
    #[arg(
        long,
        global = true,
        env = "CREDBROKER_BROKER",
        value_name = "URL[,URL…]",
        value_delimiter = ',',
        default_value = "https://127.0.0.1:7443"
    )]
    pub broker: Vec<String>,
    /// Output format of admin commands.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `--on-anomaly`: what a detected anomaly does to the identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnAnomalyArg {
    /// Audit record, metric and flag only.
    Alert,
    /// Also disable the identity.
    Disable,
}

impl OnAnomalyArg {
    /// The API's word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alert => "alert",
            Self::Disable => "disable",
        }
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// JSON for scripts.
    Json,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker. Without --config it serves `dev` on embedded
    /// defaults; CREDBROKER_* variables override the file, and these flags
    /// override both.
    Serve {
        /// TOML configuration file; without one, built-in defaults apply.
        #[arg(long, env = "CREDBROKER_CONFIG")]
        config: Option<PathBuf>,
        /// gRPC (TLS) listen address. [default: 127.0.0.1:7443]
        #[arg(long, env = "CREDBROKER_GRPC_LISTEN", value_name = "ADDR")]
        grpc_listen: Option<std::net::SocketAddr>,
        /// HTTP listen address (JWKS, bundles, CRLs, health). [default:
        /// 127.0.0.1:7080]
        #[arg(long, env = "CREDBROKER_HTTP_LISTEN", value_name = "ADDR")]
        http_listen: Option<std::net::SocketAddr>,
        /// File holding the key-encryption key (32 bytes, base64 or hex).
        /// [default: DATA_DIR/kek, generated on first start]
        #[arg(long, env = "CREDBROKER_KEK_FILE", value_name = "FILE")]
        kek_file: Option<PathBuf>,
        /// Log lines as text, or as one JSON object per line (audit events
        /// on target credbroker::audit included).
        #[arg(long, value_enum, env = "CREDBROKER_LOG_FORMAT", default_value_t)]
        log_format: credbroker_client::logging::LogFormat,
    },
    /// Print a shell completion script: `credbroker completions bash >
    /// /etc/bash_completion.d/credbroker`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Copy a running broker's SQLite database into FILE, consistently
    /// (SQLite `VACUUM INTO`; the broker keeps serving). Run it as the
    /// broker's user, with its --data-dir. The KEK is not in the copy: keep
    /// it with the backup, apart from it.
    Backup {
        /// The new backup file (must not exist; created 0600).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Manage identities.
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Manage join tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Query the audit log, or `audit verify` its hash chain.
    Audit(AuditArgs),
    /// Revoke credentials at once (or `--list` what is revoked).
    Revoke(RevokeArgs),
    /// Each environment's rotating CA and JWT keys: list, rotate, retire.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Named operators with roles (admin, operator, auditor): create,
    /// list, revoke.
    #[command(subcommand)]
    Operator(operator::OperatorCommand),
    /// Print a one-time login link to the web inventory (/ui), as the
    /// caller's operator with its role; the link alone is the last line.
    Ui,
}

/// `credbroker revoke (--jti J | --serial S | --identity E/N | --env E | --owner O) --reason R`
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["jti", "serial", "identity", "env", "owner", "list"])))]
pub struct RevokeArgs {
    /// One JWT. A `jti` is base64url and may start with `-`.
    #[arg(long, allow_hyphen_values = true)]
    pub jti: Option<String>,
    /// One certificate (hex serial).
    #[arg(long)]
    pub serial: Option<String>,
    /// Every credential of ENV/NAME; it also gets no new ones until re-enabled.
    #[arg(long)]
    pub identity: Option<String>,
    /// Every credential of an environment.
    #[arg(long)]
    pub env: Option<String>,
    /// Every credential of every identity this owner owns.
    #[arg(long)]
    pub owner: Option<String>,
    /// Why (required for a revocation).
    #[arg(long, required_unless_present = "list")]
    pub reason: Option<String>,
    /// Show the live revocations instead.
    #[arg(long)]
    pub list: bool,
}

/// `credbroker audit [filters]` or `credbroker audit verify`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    /// `verify`: check that no entry was altered or removed.
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// Only this identity (ENV/NAME).
    #[arg(long)]
    pub identity: Option<String>,
    /// Only this JWT id ("who used this token"); it may start with `-`.
    #[arg(long, allow_hyphen_values = true)]
    pub jti: Option<String>,
    /// Only this certificate serial (hex).
    #[arg(long)]
    pub serial: Option<String>,
    /// Only this actor: `admin`, an operator's name, `anonymous` or a
    /// SPIFFE ID.
    #[arg(long)]
    pub actor: Option<String>,
    /// Only this environment.
    #[arg(long)]
    pub env: Option<String>,
    /// From this time: RFC 3339, or a duration ago (7d).
    #[arg(long, value_parser = parse_past_time)]
    pub since: Option<i64>,
    /// Until this time: RFC 3339, or a duration ago.
    #[arg(long, value_parser = parse_past_time)]
    pub until: Option<i64>,
    /// Most entries shown, newest first.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

/// `credbroker audit …` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain and report the first altered or missing entry,
    /// and check the newest signed checkpoint (a truncated or rewritten
    /// log fails).
    Verify {
        /// Checkpoint file to check against (default: the broker's
        /// DATA_DIR/audit.checkpoints).
        #[arg(long, conflicts_with = "export")]
        checkpoint: Option<std::path::PathBuf>,
        /// Verify these retention export files instead of the log, in
        /// order (each must continue the one before it).
        #[arg(long, value_name = "FILE")]
        export: Vec<std::path::PathBuf>,
    },
}

/// Names one identity.
#[derive(Debug, Clone, Args)]
pub struct IdentityArgs {
    /// Environment.
    #[arg(long)]
    pub env: String,
    /// Identity name.
    #[arg(long)]
    pub name: String,
}

/// `credbroker identity …`
#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Register a workload identity.
    Create {
        /// The identity.
        #[command(flatten)]
        id: IdentityArgs,
        /// Team or person accountable for it.
        #[arg(long)]
        owner: String,
        /// Why it exists.
        #[arg(long)]
        purpose: String,
        /// Audience its JWTs may name (repeatable).
        #[arg(long = "audience")]
        audiences: Vec<String>,
        /// Scope its JWTs may carry (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// ATTESTOR:KEY=VALUE that attestation must prove (repeatable), e.g.
        /// prod-cluster:ns=payments. ATTESTOR names a configured
        /// `[[attestors]]` table; an identity with selectors cannot be
        /// attested by join token.
        #[arg(long = "selector", value_parser = parse_selector)]
        selectors: Vec<(String, String)>,
        /// ENV/NODE: the node identity whose agent (`credbroker-agent
        /// --node`) serves this workload; its selectors are then `unix:…`.
        #[arg(long)]
        parent: Option<String>,
        /// Network (CIDR) Attest, FetchJwt and RenewX509 may come from
        /// (repeatable); without any, every address is allowed.
        #[arg(long = "allow-cidr")]
        allow_cidrs: Vec<String>,
        /// Bind its JWTs to the certificate they are issued to (RFC 8705
        /// `cnf`): verifiers then refuse them unless presented over mTLS by
        /// that certificate. Without it JWTs are bearer tokens.
        #[arg(long)]
        require_binding: bool,
        /// What a detected anomaly does besides the audit record, the
        /// metric and the flag in the inventory: alert, or disable the
        /// identity too.
        #[arg(long, value_enum, default_value_t = OnAnomalyArg::Alert)]
        on_anomaly: OnAnomalyArg,
        /// JWT lifetime, e.g. 5m.
        #[arg(long, value_parser = parse_duration)]
        jwt_ttl: Option<Duration>,
        /// X.509 lifetime, e.g. 1h.
        #[arg(long, value_parser = parse_duration)]
        x509_ttl: Option<Duration>,
        /// Retirement date: RFC 3339 time (2027-01-31T00:00:00Z) or a
        /// duration from now (90d).
        #[arg(long, value_parser = parse_time)]
        expires_at: Option<i64>,
    },
    /// List identities.
    List {
        /// Only this environment.
        #[arg(long)]
        env: Option<String>,
        /// Only this owner.
        #[arg(long)]
        owner: Option<String>,
        /// Only identities with no issuance in this long (e.g. 30d).
        #[arg(long, value_parser = parse_duration)]
        stale: Option<Duration>,
    },
    /// Show one identity.
    Show {
        /// The identity.
        #[command(flatten)]
        id: IdentityArgs,
    },
    /// Stop issuing credentials to an identity (reversible with `enable`).
    Disable {
        /// The identity.
        #[command(flatten)]
        id: IdentityArgs,
        /// Why, for the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Resume issuing credentials to a disabled identity.
    Enable {
        /// The identity.
        #[command(flatten)]
        id: IdentityArgs,
        /// Why, for the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Retire an identity for good.
    Retire {
        /// The identity.
        #[command(flatten)]
        id: IdentityArgs,
        /// Why, for the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// `credbroker token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a join token for one identity and print it (shown once).
    Create {
        /// The identity.
        #[command(flatten)]
        id: IdentityArgs,
        /// Lifetime, e.g. 10m.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// How many attestations it allows (1 to 1000).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
        uses: u32,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::model::parse_duration(s)
}

fn parse_selector(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .map_err(|_| format!("{s:?} is before 1970"));
    }
    let d = parse_duration(s)
        .map_err(|_| format!("{s:?} is neither an RFC 3339 time nor a duration"))?;
    Ok(crate::model::unix_now() + d.as_secs() as i64)
}

/// A point in the past as unix milliseconds: RFC 3339, or a duration ago.
fn parse_past_time(s: &str) -> Result<i64, String> {
    let at = match humantime::parse_rfc3339_weak(s) {
        Ok(t) => t,
        Err(_) => {
            let ago = parse_duration(s)
                .map_err(|_| format!("{s:?} is neither an RFC 3339 time nor a duration like 7d"))?;
            std::time::SystemTime::now()
                .checked_sub(ago)
                .ok_or_else(|| format!("{s:?} is too long ago"))?
        }
    };
    at.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .map_err(|_| format!("{s:?} is before 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_command_lines() {
        let cli = Cli::try_parse_from([
            "credbroker",
            "identity",
            "create",
            "--env",
            "dev",
            "--name",
            "api",
            "--owner",
            "o",
            "--purpose",
            "p",
            "--audience",
            "a",
            "--audience",
            "b",
            "--selector",
            "k=v",
            "--jwt-ttl",
            "2m",
            "--expires-at",
            "2030-01-01T00:00:00Z",
        ])
        .unwrap();
        let Command::Identity(IdentityCommand::Create {
            audiences,
            selectors,
            jwt_ttl,
            expires_at,
            ..
        }) = cli.command
        else {
            panic!("wrong command")
        };
        assert_eq!(audiences, ["a", "b"]);
        assert_eq!(selectors, [("k".to_owned(), "v".to_owned())]);
        assert_eq!(jwt_ttl, Some(Duration::from_secs(120)));
        assert_eq!(expires_at, Some(1_893_456_000));
        assert!(Cli::try_parse_from(["credbroker", "identity", "create", "--env", "dev"]).is_err());
        assert!(parse_selector("novalue").is_err());
        assert!(parse_duration("soon").is_err());
        // A join token nobody can use is a mistake, not a default.
        let uses = |n: &str| {
            Cli::try_parse_from([
                "credbroker",
                "token",
                "create",
                "--env",
                "dev",
                "--name",
                "api",
                "--uses",
                n,
            ])
        };
        let err = uses("0").unwrap_err().to_string();
        assert!(err.contains("--uses") && err.contains("1..=1000"), "{err}");
        assert!(uses("1001").is_err());
        assert!(uses("3").is_ok());
        assert_eq!(
            parse_past_time("2030-01-01T00:00:00Z"),
            Ok(1_893_456_000_000)
        );
        assert!(parse_past_time("yesterday").is_err());
        let cli =
            Cli::try_parse_from(["credbroker", "audit", "--jti", "abc", "--since", "7d"]).unwrap();
        let Command::Audit(args) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!(args.jti.as_deref(), Some("abc"));
        assert!(args.command.is_none());
        // One jti in 64 starts with '-' (base64url): it is a value, not a flag.
        let cli = Cli::try_parse_from(["credbroker", "audit", "--jti", "-bM2PvHmKwWq"]).unwrap();
        let Command::Audit(args) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!(args.jti.as_deref(), Some("-bM2PvHmKwWq"));
        let cli = Cli::try_parse_from(["credbroker", "revoke", "--jti", "-x", "--reason", "r"]);
        assert!(cli.is_ok(), "{cli:?}");
        // So does one JWT key id in 64 (a base64url thumbprint).
        let cli = Cli::try_parse_from([
            "credbroker",
            "keys",
            "retire",
            "--env",
            "dev",
            "--key",
            "-gFh23fNbuwjJ6DYam5kFlYBuuWHgzeGOJQdQAqQ-MQ",
            "--reason",
            "leaked",
        ]);
        assert!(cli.is_ok(), "{cli:?}");
        assert!(
            Cli::try_parse_from(["credbroker", "revoke", "--jti", "j"]).is_err(),
            "reason required"
        );
        assert!(
            Cli::try_parse_from(["credbroker", "revoke", "--reason", "r"]).is_err(),
            "target required"
        );
        assert!(
            Cli::try_parse_from([
                "credbroker",
                "revoke",
                "--jti",
                "j",
                "--serial",
                "s",
                "--reason",
                "r"
            ])
            .is_err()
        );
        assert!(
            Cli::try_parse_from([
                "credbroker",
                "revoke",
                "--identity",
                "dev/api",
                "--reason",
                "leak"
            ])
            .is_ok()
        );
        let cli = Cli::try_parse_from(["credbroker", "audit", "verify"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Audit(AuditArgs {
                command: Some(AuditCommand::Verify {
                    checkpoint: None,
                    ..
                }),
                ..
            })
        ));
    }
}
