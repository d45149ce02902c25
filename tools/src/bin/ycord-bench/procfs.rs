//! The server process as seen from /proc (CPU time, resident memory), and our own file
//! descriptor limit. Linux only; on other systems `--server-pid` reports an error.

use std::time::Duration;

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::unistd::{SysconfVar, sysconf};

use crate::error::BenchError;

/// A process whose CPU time and memory are sampled around a run.
#[derive(Debug, Clone, Copy)]
pub struct ServerProcess {
    pid: u32,
    ticks_per_second: u64,
}

impl ServerProcess {
    /// Checks that the process exists and can be read.
    pub fn open(pid: u32) -> Result<Self, BenchError> {
        let ticks_per_second = match sysconf(SysconfVar::CLK_TCK) {
            Ok(Some(ticks)) if ticks > 0 => ticks as u64,
            _ => 100,
        };
        let process = ServerProcess {
            pid,
            ticks_per_second,
        };
        process.cpu_time()?;
        process.rss_kb()?;
        Ok(process)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn read(&self, file: &str) -> Result<String, BenchError> {
        let path = format!("/proc/{}/{file}", self.pid);
        std::fs::read_to_string(&path).map_err(|error| {
            BenchError::Setup(format!(
                "cannot read {path} (--server-pid {}): {error}",
                self.pid
            ))
        })
    }

    /// User plus system CPU time used so far (`utime + stime` of /proc/PID/stat).
    pub fn cpu_time(&self) -> Result<Duration, BenchError> {
        let stat = self.read("stat")?;
        let malformed = || BenchError::Setup(format!("unexpected /proc/{}/stat format", self.pid));
        // The command name (field 2) may hold spaces and parentheses: fields after the last
        // ')' start at field 3 (state); utime and stime are fields 14 and 15.
        let after_name = stat.rsplit_once(')').ok_or_else(malformed)?.1;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let field = |number: usize| -> Result<u64, BenchError> {
            fields
                .get(number - 3)
                .and_then(|value| value.parse().ok())
                .ok_or_else(malformed)
        };
        let ticks = field(14)? + field(15)?;
        Ok(Duration::from_micros(
            ticks.saturating_mul(1_000_000) / self.ticks_per_second,
        ))
    }

    /// Resident set size in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kb(&self) -> Result<u64, BenchError> {
        let status = self.read("status")?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| BenchError::Setup(format!("no VmRSS in /proc/{}/status", self.pid)))
    }
}

/// Raises this process's soft limit on open files to its hard limit, so that thousands of
/// connections can be opened. Returns the new soft limit.
pub fn raise_open_files_limit() -> Result<u64, BenchError> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|error| BenchError::Setup(format!("getrlimit(RLIMIT_NOFILE): {error}")))?;
    if soft >= hard {
        return Ok(soft);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
        .map_err(|error| BenchError::Setup(format!("setrlimit(RLIMIT_NOFILE, {hard}): {error}")))?;
    Ok(hard)
}

/// This process's own CPU time so far (to show how much of the machine the load tool used).
pub fn own_cpu_time() -> Duration {
    ServerProcess::open(std::process::id())
        .and_then(|process| process.cpu_time())
        .unwrap_or_default()
}
