//! Readings of a process from `/proc`: CPU time and memory, for the
//! benchmarks' tables (100 % CPU = one core).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::process::Command;

/// Clock ticks per second (`getconf CLK_TCK`), 100 if unknown.
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

/// `/proc/<pid>/stat` and `/proc/<pid>/status`, opened once and read again
/// from the start each time, so readings go on when this process has no
/// file descriptor left to open them (which a heavy run can reach).
pub struct ProcFiles {
    pid: u32,
    stat: File,
    status: File,
}

impl ProcFiles {
    /// The process read (0: this one).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `pid` 0 means this process.
    pub fn open(pid: u32) -> Option<Self> {
        let dir = if pid == 0 {
            PathBuf::from("/proc/self")
        } else {
            PathBuf::from(format!("/proc/{pid}"))
        };
        Some(Self {
            pid,
            stat: File::open(dir.join("stat")).ok()?,
            status: File::open(dir.join("status")).ok()?,
        })
    }

    fn reread(file: &mut File) -> Option<String> {
        file.seek(SeekFrom::Start(0)).ok()?;
        let mut text = String::new();
        file.read_to_string(&mut text).ok()?;
        Some(text)
    }

    /// utime + stime, in clock ticks.
    pub fn cpu_ticks(&mut self) -> Option<u64> {
        let stat = Self::reread(&mut self.stat)?;
        // Fields after the command name (which may hold spaces), from field 3.
        let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
        let utime: u64 = fields.next()?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        Some(utime + stime)
    }

    /// `VmRSS` and `VmHWM`, in KiB.
    pub fn memory_kb(&mut self) -> (Option<u64>, Option<u64>) {
        let Some(status) = Self::reread(&mut self.status) else {
            return (None, None);
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}
