//! Logging: the filter and format in, a subscriber out whose writes never block the process
//! (lines go through a bounded queue to a writer thread and are dropped when the queue is
//! full or stderr is gone), with librdkafka's own lines silenced for one-shot commands and
//! rate-limited for the service. Also prints the final error, in JSON when asked.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::Metadata;
use tracing::subscriber::Interest;
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};

/// Lines a stuck stderr may hold back before new ones are dropped.
const QUEUE_LINES: usize = 16_384;

/// One librdkafka line per this period and level passes in the service.
pub const KAFKA_LOG_PERIOD: Duration = Duration::from_secs(30);

/// How the process logs.
pub struct LogSettings<'a> {
    pub filter: &'a str,
    pub json: bool,
    /// One-shot commands: librdkafka's own lines are off unless the filter names them; the
    /// command reports the one error that matters.
    pub quiet_kafka: bool,
}

/// Keeps the writer thread; dropping it flushes for at most ~1.5 s, never longer.
pub struct LogGuard {
    guard: Option<WorkerGuard>,
    writer: NonBlocking,
    json: bool,
}

/// stderr that reports success even when the reader is gone (EPIPE): a closed pipe must
/// never stop the process or make it panic.
struct Lenient;

impl Write for Lenient {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Passes librdkafka lines (targets `librdkafka`, `rdkafka::*`) at most once per
/// [`KAFKA_LOG_PERIOD`] per target and level; everything else passes.
struct KafkaLogLimiter {
    last: Mutex<HashMap<(String, tracing::Level), Instant>>,
}

fn is_kafka_target(target: &str) -> bool {
    target == "librdkafka" || target.starts_with("rdkafka")
}

impl<S> Filter<S> for KafkaLogLimiter {
    fn enabled(&self, meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        if !meta.is_event() || !is_kafka_target(meta.target()) {
            return true;
        }
        let mut last = self.last.lock().expect("log limiter lock");
        let key = (meta.target().to_string(), *meta.level());
        match last.get(&key) {
            Some(t) if t.elapsed() < KAFKA_LOG_PERIOD => false,
            _ => {
                last.insert(key, Instant::now());
                true
            }
        }
    }

    fn callsite_enabled(&self, _meta: &'static Metadata<'static>) -> Interest {
        Interest::sometimes()
    }
}

/// Installs the global subscriber. `RUST_LOG`, when set, replaces `settings.filter`.
pub fn init(settings: &LogSettings<'_>) -> LogGuard {
    let (subscriber, guard) = build(settings, Lenient);
    // Also routes the `log` records of librdkafka's default contexts into it.
    let _ = tracing_subscriber::util::SubscriberInitExt::try_init(subscriber);
    guard
}

/// The subscriber and its guard, writing to `out` through the non-blocking queue.
pub fn build<W: Write + Send + 'static>(
    settings: &LogSettings<'_>,
    out: W,
) -> (Box<dyn tracing::Subscriber + Send + Sync>, LogGuard) {
    let mut directives = std::env::var("RUST_LOG").unwrap_or_else(|_| settings.filter.to_string());
    if settings.quiet_kafka && !directives.contains("rdkafka") {
        directives.push_str(",librdkafka=off,rdkafka=off");
    }
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("log-writer")
        .finish(out);
    let limiter = KafkaLogLimiter {
        last: Mutex::new(HashMap::new()),
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && !settings.json;
    let registry = tracing_subscriber::registry().with(filter);
    let subscriber: Box<dyn tracing::Subscriber + Send + Sync> = if settings.json {
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(writer.clone())
            .with_filter(limiter);
        Box::new(registry.with(layer))
    } else {
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer.clone())
            .with_filter(limiter);
        Box::new(registry.with(layer))
    };
    (
        subscriber,
        LogGuard {
            guard: Some(guard),
            writer,
            json: settings.json,
        },
    )
}

use tracing_subscriber::Layer as _;

/// The final error line of a command: `error: ...` or a JSON object with `level`, `message`.
pub fn error_line(message: &str, json: bool) -> String {
    if json {
        let v = serde_json::json!({
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "level": "ERROR",
            "message": message,
        });
        format!("{v}\n")
    } else {
        format!("error: {message}\n")
    }
}

impl LogGuard {
    /// Writes the final error through the same non-blocking queue as the logs.
    pub fn error(&mut self, message: &str) {
        let _ = self
            .writer
            .write_all(error_line(message, self.json).as_bytes());
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(g) = self.guard.take() {
            // The writer thread's own shutdown waits up to 1.1 s; a stuck stderr must not
            // hold the process beyond that, so the wait happens on a helper thread.
            let (tx, rx) = std::sync::mpsc::channel();
            let _ = std::thread::Builder::new()
                .name("log-flush".into())
                .spawn(move || {
                    drop(g);
                    let _ = tx.send(());
                });
            let _ = rx.recv_timeout(Duration::from_millis(1500));
        }
    }
}

/// Writes one line to stderr (a command's summary), ignoring a closed pipe.
pub fn stderr_line(line: &str) {
    let _ = writeln!(Lenient, "{line}");
}

/// Prints the final error straight to stderr (before logging is set up), never blocking on
/// or failing because of a closed pipe.
pub fn early_error(message: &str, json: bool) {
    let _ = Lenient.write_all(error_line(message, json).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines() {
        assert_eq!(error_line("x: y", false), "error: x: y\n");
        let v: serde_json::Value = serde_json::from_str(&error_line("bad \"q\"", true)).unwrap();
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["message"], "bad \"q\"");
    }

    /// A writer that never returns (stderr into a pipe nobody reads).
    struct Stuck(std::sync::Arc<std::sync::atomic::AtomicBool>);

    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            loop {
                std::thread::park();
            }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_stderr_never_blocks_logging_or_exit() {
        let reached = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let settings = LogSettings {
            filter: "info",
            json: false,
            quiet_kafka: false,
        };
        let (subscriber, mut guard) = build(&settings, Stuck(reached.clone()));
        tracing::subscriber::with_default(subscriber, || {
            // Far more lines than the queue holds: the extra ones are dropped, none waits.
            for i in 0..(QUEUE_LINES * 3) {
                tracing::info!(i, "a line nobody reads");
            }
        });
        guard.error("the final error");
        // The writer thread gets there when it is scheduled (late on a loaded machine).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !reached.load(std::sync::atomic::Ordering::Relaxed) {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer was never reached"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // Returns although the writer thread is stuck forever.
        drop(guard);
    }

    #[test]
    fn librdkafka_lines_are_rate_limited() {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let settings = LogSettings {
            filter: "info",
            json: false,
            quiet_kafka: false,
        };
        let (subscriber, guard) = build(&settings, buf.clone());
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..100 {
                tracing::error!(target: "librdkafka", "librdkafka: FAIL connect refused");
                tracing::error!(target: "rdkafka::client", "librdkafka: all brokers down");
                tracing::info!("own line");
            }
        });
        drop(guard);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("connect refused").count(), 1, "{text}");
        assert_eq!(text.matches("all brokers down").count(), 1);
        assert_eq!(text.matches("own line").count(), 100);
    }

    #[test]
    fn kafka_targets() {
        assert!(is_kafka_target("librdkafka"));
        assert!(is_kafka_target("rdkafka::client"));
        assert!(!is_kafka_target("usage_aggregator::kafka"));
    }
}
