//! A progress line on stderr about once a second during long phases.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Prints `[label elapsed] status()` every second until stopped.
pub struct Progress {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts printing unless `quiet`. `status` is called once a second.
    pub fn start(
        quiet: bool,
        label: &'static str,
        status: impl Fn() -> String + Send + 'static,
    ) -> Progress {
        let stop = CancellationToken::new();
        let task = (!quiet).then(|| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {
                            eprintln!("[{label} {:>5.1}s] {}", started.elapsed().as_secs_f64(), status());
                        }
                    }
                }
            })
        });
        Progress { stop, task }
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Prints a one-off note on stderr unless `quiet`.
pub fn note(quiet: bool, message: impl std::fmt::Display) {
    if !quiet {
        eprintln!("{message}");
    }
}
