//! Brokers sharing one PostgreSQL database (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`), each test in a schema of
//! its own.

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection;

use crate::TestBroker;

/// The database the tests use.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A schema of its own, dropped with it.
pub struct Schema {
    name: String,
    /// The store URL that uses the schema.
    pub url: String,
}

impl Schema {
    /// Creates a new, empty schema.
    pub async fn create() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "cb_e2e_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = sqlx::PgConnection::connect(&database_url())
            .await
            .expect("PostgreSQL at DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test)");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"
        )))
        .execute(&mut conn)
        .await
        .expect("create schema");
        let base = database_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options[search_path]={name}");
        Self { name, url }
    }

    /// Runs one SQL statement in the schema (to inspect or damage it).
    pub async fn execute(&self, sql: &str) -> u64 {
        let mut conn = sqlx::PgConnection::connect(&self.url)
            .await
            .expect("connect");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await
            .expect("execute")
            .rows_affected()
    }
}

impl Schema {
    /// The number a `SELECT count(*) …` in the schema returns.
    pub async fn count(&self, sql: &str) -> usize {
        let mut conn = sqlx::PgConnection::connect(&self.url)
            .await
            .expect("connect");
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&mut conn)
            .await
            .expect("count");
        n as usize
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&database_url()).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP SCHEMA IF EXISTS {name} CASCADE"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

/// `n` brokers serving `dev` on one schema, sharing one KEK file, started
/// together (so first-start key creation races, as it would in a rollout).
pub struct Replicas {
    /// The brokers; each has its own data directory and ports.
    pub brokers: Vec<TestBroker>,
    /// Their database.
    pub schema: Schema,
    _kek_dir: tempfile::TempDir,
}

impl Replicas {
    /// Starts `n` brokers with `extra` TOML in each configuration.
    pub async fn start(n: usize, extra: &str) -> Self {
        let schema = Schema::create().await;
        let kek_dir = tempfile::tempdir().expect("tempdir");
        let kek = kek_dir.path().join("kek");
        let bytes: Vec<u8> = (0..32).map(|_| rand_byte()).collect();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&kek, hex).expect("write kek");
        // One public URL for all, as behind a load balancer: it names the
        // OIDC issuer, which must not depend on the replica that signed.
        let toml = format!(
            "store_url = {:?}\nkek_file = {:?}\npublic_url = \"https://credbroker.test\"\n{extra}\n",
            schema.url, kek
        );
        let starts = (0..n).map(|_| {
            let toml = toml.clone();
            async move { TestBroker::start_with(&["dev"], &toml).await }
        });
        let brokers = futures_join_all(starts).await;
        Self {
            brokers,
            schema,
            _kek_dir: kek_dir,
        }
    }
}

fn rand_byte() -> u8 {
    let mut b = [0u8; 1];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("random");
    b[0]
}

/// Runs `futures` concurrently, each on its own task; outputs in order.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("start task"));
    }
    out
}
