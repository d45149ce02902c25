//! Printing results: one JSON object on stdout with `--json`, a human summary otherwise, and
//! the exit code (0 when every check passed, 1 when one failed).

use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use crate::error::BenchError;
use crate::wire::Protocol;

/// The results of one subcommand.
pub trait Report: Serialize {
    /// A few lines for people.
    fn human(&self) -> String;
    /// Checks that failed; empty when the run is a success.
    fn failures(&self) -> Vec<String>;
}

/// Prints the report and returns the process's exit code.
pub fn emit<R: Report>(command: &str, protocol: Protocol, report: &R, json: bool) -> ExitCode {
    let failures = report.failures();
    if json {
        let mut object = serde_json::Map::new();
        object.insert("command".into(), command.into());
        object.insert("protocol".into(), protocol.name().into());
        object.insert("ok".into(), failures.is_empty().into());
        object.insert("failures".into(), failures.clone().into());
        match serde_json::to_value(report) {
            Ok(serde_json::Value::Object(fields)) => object.extend(fields),
            Ok(other) => {
                object.insert("results".into(), other);
            }
            Err(error) => {
                object.insert("error".into(), error.to_string().into());
            }
        }
        println!("{}", serde_json::Value::Object(object));
    } else {
        if protocol != Protocol::YWebsocket {
            println!("protocol: {protocol}");
        }
        print!("{}", report.human());
        if failures.is_empty() {
            println!("result: OK");
        }
    }
    for failure in &failures {
        eprintln!("FAILED: {failure}");
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Prints an error that prevented the run, as JSON on stdout too with `--json`.
pub fn emit_error(command: &str, error: &BenchError, json: bool) -> ExitCode {
    if json {
        let object = serde_json::json!({
            "command": command,
            "ok": false,
            "error": error.to_string(),
        });
        println!("{object}");
    }
    eprintln!("ycord-bench {command}: error: {error}");
    error.exit_code()
}

/// The server's CPU time over a phase, when `--server-pid` was given.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ServerCpu {
    pub pid: u32,
    /// User + system CPU time used during the measured phase.
    pub cpu_ms: f64,
    /// `cpu_ms` over the phase's wall time: 1.0 is one core fully busy.
    pub cores_busy: f64,
    /// CPU time per unit of work (per delivered update, per replayed update, per joiner).
    pub cpu_us_per_unit: f64,
    /// Resident memory at the end of the phase.
    pub rss_kb_after: u64,
}

impl ServerCpu {
    pub fn new(pid: u32, cpu: Duration, wall: Duration, units: u64, rss_kb_after: u64) -> Self {
        ServerCpu {
            pid,
            cpu_ms: cpu.as_secs_f64() * 1000.0,
            cores_busy: cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9),
            cpu_us_per_unit: cpu.as_secs_f64() * 1e6 / units.max(1) as f64,
            rss_kb_after,
        }
    }

    /// One line: `server CPU 1234 ms (0.62 cores), 12.3 µs per <unit>, RSS 45 MiB`.
    pub fn line(&self, unit: &str) -> String {
        format!(
            "server CPU (pid {}): {:.0} ms ({:.2} cores busy), {:.1} µs per {unit}; RSS after {:.1} MiB\n",
            self.pid,
            self.cpu_ms,
            self.cores_busy,
            self.cpu_us_per_unit,
            self.rss_kb_after as f64 / 1024.0
        )
    }
}

/// Formats a count of disconnects by kind (`{"1013": 2}`) for people.
pub fn kinds(counts: &std::collections::BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(kind, count)| format!("{count}× {kind}"))
        .collect::<Vec<_>>()
        .join(", ")
}
