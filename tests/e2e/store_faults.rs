//! Store faults end in recovery: a full disk makes writes fail and
//! `/readyz` say not ready, nothing answers success that was not committed,
//! and once space returns writes work again without a restart. A Revoke
//! waiting on a store locked from outside answers UNAVAILABLE in bounded
//! time instead of hanging to the client's deadline.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use credbroker_e2e::{TestBroker, http};
use credbroker_proto::v1::admin_client::AdminClient;
use credbroker_proto::v1::{RevokeRequest, revoke_request};
use serde_json::Value;
use sqlx::Connection;
use tonic::Code;

/// Lazily unmounts a file system when dropped.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(dir: &Path, size: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .expect("mount")
        .success();
    assert!(ok, "mounting a tmpfs at {} needs root", dir.display());
}

/// Fills the file system holding `path` until it has no space left.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

async fn readyz(broker: &TestBroker) -> u16 {
    http::get(broker.http_port(), "/readyz").await.unwrap().0
}

async fn wait_readyz(broker: &TestBroker, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while readyz(broker).await != want {
        assert!(
            Instant::now() < deadline,
            "/readyz never answered {want}:\n{}",
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn create(broker: &TestBroker, name: &str) -> Result<(), String> {
    let out = broker.cli(&[
        "identity",
        "create",
        "--env",
        "dev",
        "--name",
        name,
        "--owner",
        "team",
        "--purpose",
        "disk full",
    ]);
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn a_full_disk_ends_in_recovery_without_a_restart() {
    let mut data = None;
    let mut broker = TestBroker::start_prepared(&["dev"], "", |dir| {
        mount_tmpfs(dir, "24m");
        data = Some(dir.to_path_buf());
    })
    .await;
    let _mounted = Mounted(data.unwrap());
    create(&broker, "before").unwrap();
    let filler = broker.data_dir().join("filler");
    fill(&filler);

    // Writes fail now; each either committed or said it did not.
    let mut answered_ok = vec!["before".to_owned()];
    let mut refusal = None;
    for i in 0..40 {
        let name = format!("during-{i}");
        match create(&broker, &name) {
            Ok(()) => answered_ok.push(name),
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let refusal = refusal.expect("a write fails on a full disk");
    println!("refused while full: {}", refusal.trim());
    assert!(refusal.contains("Unavailable"), "{refusal}");
    wait_readyz(&broker, 503).await;

    // Space returns: writes work again by themselves.
    std::fs::remove_file(&filler).unwrap();
    wait_readyz(&broker, 200).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match create(&broker, "after") {
            Ok(()) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "writes never recovered: {e}\n{}",
                    broker.log()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    answered_ok.push("after".into());

    // Every create that answered success survived a kill -9.
    broker.crash_and_restart().await;
    let listed: Value =
        serde_json::from_str(&broker.cli_ok(&["identity", "list", "--output", "json"])).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    for name in &answered_ok {
        assert!(names.contains(&name.as_str()), "{name} lost: {names:?}");
    }
}

#[tokio::test]
async fn a_revoke_waiting_on_a_locked_store_answers_unavailable_in_bounded_time() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &[], &[]);
    let url = format!("sqlite://{}", broker.database().display());
    let mut lock = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .unwrap();

    let channel = broker.channel(Some(broker.admin_identity())).await.unwrap();
    let mut admin = AdminClient::new(channel);
    let mut request = tonic::Request::new(RevokeRequest {
        target: Some(revoke_request::Target::Identity(
            credbroker_proto::v1::IdentityRef {
                env: "dev".into(),
                name: "api".into(),
            },
        )),
        reason: "compromised".into(),
    });
    // Far longer than the broker's own bound: what comes back must be the
    // broker's answer, not the client giving up.
    request.set_timeout(Duration::from_secs(60));
    let started = Instant::now();
    let err = admin.revoke(request).await.unwrap_err();
    println!("after {:?}: {err:?}", started.elapsed());
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(readyz(&broker).await, 503, "a locked store is not ready");

    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    wait_readyz(&broker, 200).await;
}
