//! Running stages under one shutdown token: stage closures in (blocking ones on their own
//! thread, async ones as tasks); on the way out, each stage's result, joined within the drain
//! deadline. A stage that ends on its own (an error, or a pipeline that cannot go on) cancels
//! the token, so every other stage drains too: one shutdown path.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The stages of one process and the token that stops them.
pub struct Stages {
    shutdown: CancellationToken,
    threads: Vec<(&'static str, std::thread::JoinHandle<anyhow::Result<()>>)>,
    tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
}

impl Stages {
    pub fn new(shutdown: CancellationToken) -> Stages {
        Stages {
            shutdown,
            threads: Vec::new(),
            tasks: Vec::new(),
        }
    }

    /// Runs a blocking stage on a thread named `name`; it must return soon after the token
    /// it is given is cancelled (`CancellationToken::is_cancelled` works from any thread).
    pub fn thread(
        &mut self,
        name: &'static str,
        stage: impl FnOnce(CancellationToken) -> anyhow::Result<()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let token = self.shutdown.clone();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let r = stage(token.clone());
                ended(name, &r, &token);
                r
            })?;
        self.threads.push((name, handle));
        Ok(())
    }

    /// Runs an async stage as a task; same contract as [`Stages::thread`].
    pub fn task<F>(&mut self, name: &'static str, stage: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let token = self.shutdown.clone();
        let fut = stage(token.clone());
        self.tasks.push((
            name,
            tokio::spawn(async move {
                let r = fut.await;
                ended(name, &r, &token);
                r
            }),
        ));
    }

    /// Waits for every stage after shutdown: threads within `threads_within` in all (each
    /// drains within its own deadline; one stuck in a client call is left behind and the
    /// process exits without it, failed: a restart resumes from the last commit), tasks
    /// within `drain_timeout`. Returns the last failure.
    pub async fn join(
        self,
        drain_timeout: Duration,
        threads_within: Duration,
    ) -> anyhow::Result<()> {
        let mut result = Ok(());
        let until = tokio::time::Instant::now() + threads_within;
        for (name, t) in self.threads {
            let joined = tokio::task::spawn_blocking(move || t.join());
            match tokio::time::timeout_at(until, joined).await {
                Ok(joined) => match joined? {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => result = Err(e.context(format!("{name} failed"))),
                    Err(_) => result = Err(anyhow::anyhow!("{name} panicked")),
                },
                Err(_) => {
                    tracing::error!(
                        stage = name,
                        "did not stop within {threads_within:?} of shutdown; exiting without it (a restart resumes from the last commit)"
                    );
                    result = Err(anyhow::anyhow!(
                        "{name} did not stop within {threads_within:?} of shutdown"
                    ));
                }
            }
        }
        for (name, t) in self.tasks {
            match tokio::time::timeout(drain_timeout, t).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => result = Err(e.context(format!("{name} failed"))),
                Ok(Err(e)) => result = Err(anyhow::anyhow!("{name} panicked: {e}")),
                Err(_) => tracing::warn!(
                    stage = name,
                    "did not drain in time; what it had not flushed is read again on restart"
                ),
            }
        }
        result
    }
}

/// A stage returned: log a failure (also one while draining), and unless shutdown was
/// already under way, shut the other stages down.
fn ended(name: &'static str, r: &anyhow::Result<()>, shutdown: &CancellationToken) {
    match r {
        Err(e) => {
            tracing::error!(stage = name, error = %e, "stage failed; shutting down (a restart resumes from the last commit)")
        }
        Ok(()) if !shutdown.is_cancelled() => {
            tracing::error!(stage = name, "stage ended before shutdown; shutting down")
        }
        Ok(()) => {}
    }
    shutdown.cancel();
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
pub async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler can be installed");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
            _ = shutdown.cancelled() => return,
        }
    }
    #[cfg(not(unix))]
    {
        tokio::select! {
            _ = ctrl_c => {}
            _ = shutdown.cancelled() => return,
        }
    }
    tracing::info!("shutdown requested; draining");
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_stage_shuts_the_others_down_and_its_error_is_returned() {
        let shutdown = CancellationToken::new();
        let mut stages = Stages::new(shutdown.clone());
        stages
            .thread("waits", |stop| {
                while !stop.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(())
            })
            .unwrap();
        stages.task("waits-too", |stop| async move {
            stop.cancelled().await;
            Ok(())
        });
        stages
            .thread("fails", |_| anyhow::bail!("broker gone"))
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), shutdown.cancelled())
            .await
            .expect("the failure cancels the token");
        let e = stages
            .join(Duration::from_secs(10), Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("fails failed: broker gone"),
            "{e:#}"
        );
    }

    #[tokio::test]
    async fn stages_that_end_on_shutdown_are_not_failures() {
        let shutdown = CancellationToken::new();
        let mut stages = Stages::new(shutdown.clone());
        stages
            .thread("a", |stop| {
                while !stop.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(())
            })
            .unwrap();
        shutdown.cancel();
        stages
            .join(Duration::from_secs(10), Duration::from_secs(10))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_thread_stuck_past_the_deadline_is_left_behind_as_a_failure() {
        let shutdown = CancellationToken::new();
        let mut stages = Stages::new(shutdown.clone());
        // Stuck in a client call that ignores the token (for 3 s, far past the deadline).
        stages
            .thread("stuck", |_| {
                std::thread::sleep(Duration::from_secs(3));
                Ok(())
            })
            .unwrap();
        shutdown.cancel();
        let started = std::time::Instant::now();
        let e = stages
            .join(Duration::from_secs(1), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            e.to_string().contains("stuck did not stop within 300ms"),
            "{e:#}"
        );
    }
}
