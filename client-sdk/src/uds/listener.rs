//! Creating the Workload API socket safely, and accepting on it.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_stream::Stream;

use super::{SocketOptions, UdsConnection};

/// Pause after a failed accept (e.g. out of file descriptors) so the
/// server does not spin on the same error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

fn error(kind: io::ErrorKind, message: String) -> io::Error {
    io::Error::new(kind, message)
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    error(e.kind(), format!("cannot {what} {}: {e}", path.display()))
}

/// A bound, listening Workload API socket (see [`bind`]).
#[derive(Debug)]
pub struct UdsListener {
    listener: std::os::unix::net::UnixListener,
    file: SocketFile,
}

/// The socket's path, removed when the listener goes away — only while it
/// is still the inode we bound, never a file someone put there since.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path)
            && m.file_type().is_socket()
            && (m.dev(), m.ino()) == (self.dev, self.ino)
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Creates the socket at `path` with `opts` and starts listening.
///
/// - The parent directory is created 0755 if missing.
/// - Something already at `path` is removed only if it is a socket nobody
///   listens on (a stale one); a live socket, a regular file, a directory or
///   a symlink is an error naming it and is left as it was.
/// - No caller can connect before the mode and group are applied: the
///   socket is bound inside a fresh 0700 directory beside `path`, chmod-ed
///   and chown-ed there, then hard-linked to `path` (which fails rather than
///   replace anything that appeared meanwhile) and the temporary name
///   removed. So the umask never decides who may connect.
pub fn bind(path: &Path, opts: &SocketOptions) -> io::Result<UdsListener> {
    if opts.mode & !0o777 != 0 {
        return Err(error(
            io::ErrorKind::InvalidInput,
            format!(
                "socket mode {:o} has bits beyond rwxrwxrwx (0777)",
                opts.mode
            ),
        ));
    }
    let gid = opts.group.as_deref().map(resolve_group).transpose()?;
    path.file_name().ok_or_else(|| {
        error(
            io::ErrorKind::InvalidInput,
            format!("socket path {} has no file name", path.display()),
        )
    })?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    create_dirs(parent)?;
    clear_stale(path)?;

    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // Short, so the staged socket path fits sun_path (108 bytes) whenever
    // `path` does, give or take a few characters.
    let staging = parent.join(format!(
        ".cb{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(|e| with_path(e, "create the staging directory", &staging))?;
    let staged = staging.join("s");
    let result = stage(&staged, path, opts, gid);
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&staging);
    let listener = result?;
    listener.set_nonblocking(true)?;
    let meta = std::fs::symlink_metadata(path)?;
    Ok(UdsListener {
        listener,
        file: SocketFile {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        },
    })
}

/// Binds at `staged` (inside the private staging directory), applies mode
/// and group, and links the finished socket to `path`.
fn stage(
    staged: &Path,
    path: &Path,
    opts: &SocketOptions,
    gid: Option<u32>,
) -> io::Result<std::os::unix::net::UnixListener> {
    let listener = std::os::unix::net::UnixListener::bind(staged).map_err(|e| {
        error(
            e.kind(),
            format!(
                "cannot bind the socket {} (staged at {}): {e}",
                path.display(),
                staged.display()
            ),
        )
    })?;
    std::fs::set_permissions(staged, std::fs::Permissions::from_mode(opts.mode))
        .map_err(|e| with_path(e, "set the mode of", staged))?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(staged, None, Some(gid)).map_err(|e| {
            error(
                e.kind(),
                format!(
                    "cannot give socket {} to group {} (gid {gid}): {e}",
                    path.display(),
                    opts.group.as_deref().unwrap_or_default()
                ),
            )
        })?;
    }
    std::fs::hard_link(staged, path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            error(
                e.kind(),
                format!(
                    "{} appeared while the socket was created; left as it is",
                    path.display()
                ),
            )
        } else {
            with_path(e, "create the socket", path)
        }
    })?;
    Ok(listener)
}

/// Creates `dir` and any missing ancestors with mode 0755 (whatever the umask).
fn create_dirs(dir: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    for d in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(0o755).create(d) {
            Ok(()) => std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| with_path(e, "set the mode of", d))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(with_path(e, "create the socket directory", d)),
        }
    }
    Ok(())
}

/// Removes a stale socket at `path`; refuses anything else that is there.
fn clear_stale(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(with_path(e, "inspect", path)),
    };
    let kind = meta.file_type();
    if !kind.is_socket() {
        let what = if kind.is_symlink() {
            "a symlink"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_file() {
            "a regular file"
        } else {
            "not a socket"
        };
        return Err(error(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is {what}; refusing to replace it with the Workload API socket",
                path.display()
            ),
        ));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(error(
            io::ErrorKind::AddrInUse,
            format!("another process is serving on {}", path.display()),
        ));
    }
    std::fs::remove_file(path).map_err(|e| with_path(e, "remove the stale socket", path))
}

/// A group name from /etc/group, or a numeric gid.
fn resolve_group(group: &str) -> io::Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group")
        .map_err(|e| with_path(e, "read", Path::new("/etc/group")))?;
    find_group(&groups, group).ok_or_else(|| {
        error(
            io::ErrorKind::NotFound,
            format!("socket group {group:?} is not in /etc/group (give a name or a numeric gid)"),
        )
    })
}

/// The gid of `name` in /etc/group text (`name:password:gid:members`).
fn find_group(groups: &str, name: &str) -> Option<u32> {
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name)
            .then(|| fields.nth(1)?.parse().ok())
            .flatten()
    })
}

impl UdsListener {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// Accepted connections, for
    /// `tonic::transport::Server::serve_with_incoming_shutdown`. Must be
    /// called inside a Tokio runtime. The socket file is removed when the
    /// stream is dropped (the server stopped).
    pub fn incoming(self) -> Incoming {
        let (listener, error) = match tokio::net::UnixListener::from_std(self.listener) {
            Ok(l) => (Some(l), None),
            Err(e) => (None, Some(e)),
        };
        Incoming {
            listener,
            error,
            backoff: None,
            _file: self.file,
        }
    }
}

/// The stream of accepted connections (see [`UdsListener::incoming`]).
#[derive(Debug)]
pub struct Incoming {
    listener: Option<tokio::net::UnixListener>,
    error: Option<io::Error>,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
    _file: SocketFile,
}

impl Stream for Incoming {
    type Item = io::Result<UdsConnection>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(e) = self.error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        if let Some(sleep) = self.backoff.as_mut() {
            std::task::ready!(sleep.as_mut().poll(cx));
            self.backoff = None;
        }
        let Some(listener) = self.listener.as_ref() else {
            return Poll::Ready(None);
        };
        let accepted = std::task::ready!(listener.poll_accept(cx));
        Poll::Ready(Some(
            match accepted.and_then(|(s, _)| UdsConnection::new(s)) {
                Ok(connection) => Ok(connection),
                Err(e) => {
                    tracing::warn!(error = %e, "Workload API socket: accept failed");
                    self.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                    Err(e)
                }
            },
        ))
    }
}

#[cfg(test)]
#[path = "listener_tests.rs"]
mod tests;
