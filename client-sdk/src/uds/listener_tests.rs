use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use super::*;

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

#[tokio::test]
async fn socket_is_owner_only_by_default_in_a_0755_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/credbroker/agent.sock");
    let listener = bind(&path, &SocketOptions::default()).unwrap();
    assert!(
        std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_socket()
    );
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&dir.path().join("run")), 0o755);
    assert_eq!(mode(path.parent().unwrap()), 0o755);
    // Nothing else is left beside it (the staging directory is gone).
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["agent.sock"]);
    // Connections through the linked name reach the listener.
    let mut incoming = listener.incoming();
    let _client = tokio::net::UnixStream::connect(&path).await.unwrap();
    let connection = tokio_stream::StreamExt::next(&mut incoming)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        connection.peer().uid,
        std::fs::metadata(dir.path()).unwrap().uid()
    );
    assert_eq!(connection.peer().pid, Some(std::process::id() as i32));
    // Dropping the stream removes the socket.
    drop(incoming);
    assert!(!path.exists());
}

#[test]
fn mode_and_group_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let gid = std::fs::metadata(dir.path()).unwrap().gid();
    let opts = SocketOptions {
        mode: 0o660,
        group: Some(gid.to_string()),
    };
    let _listener = bind(&path, &opts).unwrap();
    assert_eq!(mode(&path), 0o660);
    assert_eq!(std::fs::metadata(&path).unwrap().gid(), gid);
}

#[test]
fn something_that_is_not_a_socket_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    std::fs::write(&path, "precious").unwrap();
    let err = bind(&path, &SocketOptions::default()).unwrap_err();
    assert!(err.to_string().contains("agent.sock"), "{err}");
    assert!(err.to_string().contains("regular file"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");

    let target = dir.path().join("target");
    std::fs::write(&target, "also precious").unwrap();
    let link = dir.path().join("link.sock");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = bind(&link, &SocketOptions::default()).unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "also precious");

    let sub = dir.path().join("dir.sock");
    std::fs::create_dir(&sub).unwrap();
    assert!(bind(&sub, &SocketOptions::default()).is_err());
    assert!(sub.is_dir());
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let live = bind(&path, &SocketOptions::default()).unwrap();
    let err = bind(&path, &SocketOptions::default()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    // A socket nobody listens on any more (its listener closed, file kept).
    std::mem::forget(live.file);
    drop(live.listener);
    let again = bind(&path, &SocketOptions::default()).unwrap();
    assert_eq!(mode(again.path()), 0o600);
}

#[test]
fn bad_options_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new/agent.sock");
    let err = bind(
        &path,
        &SocketOptions {
            mode: 0o4755,
            group: None,
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("4755"), "{err}");
    let err = bind(
        &path,
        &SocketOptions {
            mode: 0o660,
            group: Some("no-such-group-here".into()),
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("no-such-group-here"), "{err}");
    assert!(!dir.path().join("new").exists());
}

#[test]
fn group_names_resolve_from_etc_group_text() {
    let groups = "root:x:0:\nadm:x:4:syslog\nwheel:x:10:\nbroken\n";
    assert_eq!(find_group(groups, "adm"), Some(4));
    assert_eq!(find_group(groups, "wheel"), Some(10));
    assert_eq!(find_group(groups, "ad"), None);
    assert_eq!(find_group(groups, "broken"), None);
}

#[test]
fn mode_bits_stay_as_asked_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let path = dir.path().join("agent.sock");
    let _l = bind(
        &path,
        &SocketOptions {
            mode: 0o666,
            group: None,
        },
    )
    .unwrap();
    assert_eq!(mode(&path), 0o666);
}
