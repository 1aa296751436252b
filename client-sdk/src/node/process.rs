//! Workload attestation on the host: what the kernel says about the process
//! at the other end of the Unix socket.
//!
//! uid and gid come from the socket itself (SO_PEERCRED, captured by the
//! kernel at connect time, so they cannot be forged). The executable's path
//! and hash come from `/proc/PID/exe`, which names whatever process holds
//! that pid *now* — so the process is identified by its start time before
//! and after reading, and refused if the pid changed hands in between or
//! now belongs to another user (SPIRE does the same re-check).

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use thiserror::Error;

/// Executables hashed at most, remembered by (device, inode, size, mtime).
const HASH_CACHE_CAPACITY: usize = 1024;

/// Why a caller could not be attested.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProcessError {
    /// The socket carried no process id (not Linux, or a socketpair).
    #[error("the caller's process id is unknown")]
    NoPid,
    /// The process is gone, or its /proc entry is unreadable.
    #[error("cannot inspect process {pid}: {why}")]
    Unreadable {
        /// Process id.
        pid: i32,
        /// What failed.
        why: String,
    },
    /// The pid now belongs to another process than the one that connected.
    #[error("process {pid} changed while it was being attested (pid reuse)")]
    Replaced {
        /// Process id.
        pid: i32,
    },
}

/// What the host proves about one calling process.
#[derive(Debug)]
pub struct ProcessFacts {
    /// Process id at connect time.
    pub pid: i32,
    /// Effective uid at connect time (from the socket).
    pub uid: u32,
    /// Effective gid at connect time (from the socket).
    pub gid: u32,
    /// User name of `uid`, when /etc/passwd has it.
    pub user: Option<String>,
    /// Absolute path of its executable.
    pub path: Option<String>,
    /// Start time in clock ticks since boot: names the process, not the pid.
    start_time: u64,
    /// SHA-256 of the executable, computed on first need.
    sha256: OnceLock<Option<String>>,
}

fn proc_path(pid: i32, what: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{what}"))
}

fn unreadable(pid: i32, e: impl std::fmt::Display) -> ProcessError {
    ProcessError::Unreadable {
        pid,
        why: e.to_string(),
    }
}

/// Field 22 of `/proc/PID/stat` (after the parenthesised command name,
/// which may itself contain spaces and parentheses).
fn start_time(pid: i32) -> Result<u64, ProcessError> {
    let stat = std::fs::read_to_string(proc_path(pid, "stat")).map_err(|e| unreadable(pid, e))?;
    let after_comm = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| unreadable(pid, "malformed stat"))?;
    // after_comm starts at field 3 (state); starttime is field 22.
    after_comm
        .split_whitespace()
        .nth(19)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| unreadable(pid, "malformed stat"))
}

/// The effective uid in `/proc/PID/status` (what SO_PEERCRED reports).
fn status_uid(pid: i32) -> Result<u32, ProcessError> {
    let status =
        std::fs::read_to_string(proc_path(pid, "status")).map_err(|e| unreadable(pid, e))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| unreadable(pid, "no Uid in status"))
}

/// The name of `uid` in /etc/passwd.
fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let id: u32 = fields.next()?.parse().ok()?;
        (id == uid).then(|| name.to_owned())
    })
}

impl ProcessFacts {
    /// Attests the process `pid` that connected with `uid`/`gid`.
    pub fn attest(pid: Option<i32>, uid: u32, gid: u32) -> Result<Self, ProcessError> {
        let pid = pid.filter(|p| *p > 0).ok_or(ProcessError::NoPid)?;
        let before = start_time(pid)?;
        let path = std::fs::read_link(proc_path(pid, "exe")).ok().map(|p| {
            p.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_owned()
        });
        let facts = Self {
            pid,
            uid,
            gid,
            user: user_name(uid),
            path,
            start_time: before,
            sha256: OnceLock::new(),
        };
        facts.still_the_same()?;
        Ok(facts)
    }

    /// Whether the pid still names the process first looked at, owned by
    /// the uid the socket reported.
    fn still_the_same(&self) -> Result<(), ProcessError> {
        if start_time(self.pid)? != self.start_time || status_uid(self.pid)? != self.uid {
            return Err(ProcessError::Replaced { pid: self.pid });
        }
        Ok(())
    }

    /// SHA-256 (hex) of the executable, hashed once per binary version.
    fn sha256(&self) -> Option<&str> {
        self.sha256
            .get_or_init(|| {
                let hash = hash_executable(self.pid).ok()?;
                // The hash is only the caller's if the pid did not change
                // hands while the file was read.
                self.still_the_same().ok()?;
                Some(hash)
            })
            .as_deref()
    }

    /// Whether the process proves selector `key` = `value`.
    pub fn proves(&self, key: &str, value: &str) -> bool {
        match key {
            "unix:uid" => value.parse() == Ok(self.uid),
            "unix:gid" => value.parse() == Ok(self.gid),
            "unix:user" => self.user.as_deref() == Some(value),
            "unix:path" => self.path.as_deref() == Some(value),
            "unix:sha256" => self.sha256().is_some_and(|h| h.eq_ignore_ascii_case(value)),
            _ => false,
        }
    }

    /// What the process proved, for messages (`unix:uid=1000, …`).
    pub fn describe(&self) -> String {
        let mut parts = vec![
            format!("unix:uid={}", self.uid),
            format!("unix:gid={}", self.gid),
        ];
        if let Some(user) = &self.user {
            parts.push(format!("unix:user={user}"));
        }
        if let Some(path) = &self.path {
            parts.push(format!("unix:path={path}"));
        }
        parts.join(", ")
    }
}

type FileVersion = (u64, u64, u64, i64);

fn hash_cache() -> &'static Mutex<HashMap<FileVersion, String>> {
    static CACHE: OnceLock<Mutex<HashMap<FileVersion, String>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// SHA-256 of `/proc/PID/exe` (the binary itself, even if deleted or
/// replaced on disk since the process started).
fn hash_executable(pid: i32) -> Result<String, ProcessError> {
    let mut file = std::fs::File::open(proc_path(pid, "exe")).map_err(|e| unreadable(pid, e))?;
    let meta = file.metadata().map_err(|e| unreadable(pid, e))?;
    let version = (meta.dev(), meta.ino(), meta.size(), meta.mtime());
    if let Some(hit) = hash_cache()
        .lock()
        .ok()
        .and_then(|c| c.get(&version).cloned())
    {
        return Ok(hit);
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(|e| unreadable(pid, e))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    let hash: String = ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if let Ok(mut cache) = hash_cache().lock() {
        if cache.len() >= HASH_CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(version, hash.clone());
    }
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> ProcessFacts {
        let uid = status_uid(std::process::id() as i32).unwrap();
        ProcessFacts::attest(Some(std::process::id() as i32), uid, 0).unwrap()
    }

    #[test]
    fn attests_this_process() {
        let facts = me();
        let exe = std::env::current_exe().unwrap();
        assert_eq!(facts.path.as_deref(), exe.to_str());
        assert!(facts.proves("unix:uid", &facts.uid.to_string()));
        assert!(!facts.proves("unix:uid", &(facts.uid + 1).to_string()));
        assert!(facts.proves("unix:path", exe.to_str().unwrap()));
        assert!(!facts.proves("unix:path", "/usr/bin/other"));
        let bytes = std::fs::read(&exe).unwrap();
        let expected: String = ring::digest::digest(&ring::digest::SHA256, &bytes)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(facts.proves("unix:sha256", &expected));
        assert!(!facts.proves("unix:sha256", &"0".repeat(64)));
        assert!(!facts.proves("k8s:ns", "default"), "only unix: selectors");
    }

    #[test]
    fn a_uid_that_does_not_own_the_pid_is_refused() {
        let real = status_uid(std::process::id() as i32).unwrap();
        let err = ProcessFacts::attest(Some(std::process::id() as i32), real + 1, 0).unwrap_err();
        assert_eq!(
            err,
            ProcessError::Replaced {
                pid: std::process::id() as i32
            }
        );
    }

    #[test]
    fn a_gone_process_is_refused() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert!(ProcessFacts::attest(Some(pid), 0, 0).is_err());
        assert_eq!(
            ProcessFacts::attest(None, 0, 0).unwrap_err(),
            ProcessError::NoPid
        );
    }
}
