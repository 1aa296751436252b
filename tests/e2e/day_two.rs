//! Day two: backup and restore, and upgrades (issue 13, item 8).

use std::process::Command;

use credbroker_client::Evidence;
use credbroker_e2e::{TestBroker, binary, http};

#[tokio::test]
async fn a_backup_of_a_running_broker_restores_with_the_same_keys_and_audit() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let client = broker.client().await;
    client
        .attest(&Evidence::JoinToken(broker.join_token("dev", "api")), &[])
        .await
        .unwrap();
    let jwks = http::get_json(broker.http_port(), "/dev/jwks.json").await;
    let bundle = http::get_json(broker.http_port(), "/dev/bundle").await;

    // Taken while the broker runs, as the broker's user would.
    let backup = broker.scratch("backups").join("credbroker.db");
    let out = Command::new(binary("credbroker"))
        .args(["backup", "--data-dir"])
        .arg(broker.data_dir())
        .arg("--out")
        .arg(&backup)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("1 identities") && said.contains("KEK"),
        "{said}"
    );
    // A second backup to the same file is refused, the first left alone.
    let before = std::fs::read(&backup).unwrap();
    let again = Command::new(binary("credbroker"))
        .args(["backup", "--data-dir"])
        .arg(broker.data_dir())
        .arg("--out")
        .arg(&backup)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert_eq!(std::fs::read(&backup).unwrap(), before);

    // Restore: the database and the KEK into a new data directory (here
    // another broker's, emptied), as the README says.
    let mut restored = TestBroker::start().await;
    restored.stop().await;
    let dir = restored.data_dir();
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&backup, dir.join("credbroker.db")).unwrap();
    std::fs::copy(broker.data_dir().join("kek"), dir.join("kek")).unwrap();
    restored.restart().await;

    assert_eq!(
        http::get_json(restored.http_port(), "/dev/jwks.json").await,
        jwks,
        "same kid"
    );
    assert_eq!(
        http::get_json(restored.http_port(), "/dev/bundle").await["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["use"] == "x509-svid"),
        bundle["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["use"] == "x509-svid"),
        "same CA"
    );
    let verified = restored.cli_ok(&["audit", "verify"]);
    assert!(verified.contains("audit log intact"), "{verified}");
    restored.cli_ok(&["identity", "show", "--env", "dev", "--name", "api"]);
}

#[tokio::test]
async fn a_database_from_a_newer_release_is_refused_and_left_alone() {
    let mut broker = TestBroker::start().await;
    broker.stop().await;
    let url = format!("sqlite://{}", broker.database().display());
    let set_version = |v: i64| {
        let url = url.clone();
        async move {
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            let old: i64 = sqlx::query_scalar("PRAGMA user_version")
                .fetch_one(&pool)
                .await
                .unwrap();
            if v >= 0 {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PRAGMA user_version = {v}")))
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            pool.close().await;
            old
        }
    };
    let current = set_version(1000).await;
    let log = broker.scratch("newer").join("serve.log");
    let mut serve = Command::new(binary("credbroker"))
        .args(["serve", "--config"])
        .arg(broker.config_path())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // It must stop by itself; one that serves is killed and fails the test.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = serve.kill();
            let _ = serve.wait();
            break None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(
        status.is_some_and(|s| !s.success()),
        "a broker started on a newer schema:\n{err}"
    );
    assert!(
        err.contains("version 1000") && err.contains(&format!("(version {current})")),
        "{err}"
    );
    assert!(err.contains("newer credbroker"), "{err}");
    assert_eq!(set_version(-1).await, 1000, "left as it was");
    set_version(current).await;
    broker.restart().await;
}

/// The README lists every `CREDBROKER_*` variable the code reads.
#[test]
fn every_environment_variable_is_in_the_readme() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut missing = Vec::new();
    let mut dirs = vec![
        root.join("broker/src"),
        root.join("client-sdk/src"),
        root.join("examples"),
    ];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for (at, _) in text.match_indices("\"CREDBROKER_") {
                let name: String = text[at + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                    .collect();
                if !readme.contains(&format!("`{name}`")) && !missing.contains(&name) {
                    missing.push(name);
                }
            }
        }
    }
    assert!(missing.is_empty(), "not in README.md: {missing:?}");
}

/// The install steps in the README are the ones in the unit's header, so
/// whichever a newcomer follows gives the service user its config and KEK.
#[test]
fn the_readme_installs_the_unit_as_its_header_says() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let unit = std::fs::read_to_string(root.join("deploy/credbroker.service")).unwrap();
    let section = &readme[readme.find("## Running it as a service").unwrap()..];
    let block = section.split("```sh\n").nth(1).unwrap();
    let block = &block[..block.find("```").unwrap()];
    for line in block.lines() {
        assert!(
            unit.contains(&format!("#   {line}\n")),
            "README step not in deploy/credbroker.service: {line}"
        );
    }
    assert!(block.contains("-g credbroker /etc/credbroker"), "{block}");
    assert!(block.contains("chown credbroker:credbroker /etc/credbroker/kek"));
}

/// Admin commands against a broker whose data directory belongs to another
/// user (a systemd install) say to run them as that user.
#[tokio::test]
async fn an_unreadable_admin_certificate_says_whose_it_is() {
    if !std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n")
    {
        eprintln!("skipped: needs root to run the CLI as another user (setpriv)");
        return;
    }
    let broker = TestBroker::start().await;
    let out = Command::new("setpriv")
        .args(["--reuid=64000", "--regid=64000", "--clear-groups"])
        .arg(binary("credbroker"))
        .arg("--data-dir")
        .arg(broker.data_dir())
        .args(["--broker", &broker.url(), "identity", "list"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("Permission denied") && err.contains("sudo -u credbroker"),
        "{err}"
    );
}
