//! Logs that never stop a node: every line goes through a bounded queue to one writer
//! thread, so a log that cannot be written (standard error on /dev/full, a closed pipe, a
//! full disk) or that blocks (a pipe nobody reads) costs the node dropped lines, never a
//! panic or a hang. Dropped lines are counted and reported in one line as soon as writing
//! works again. Also the panic hook of node programs: a panic ends the process (logged)
//! rather than leaving a half-dead node that holds its port.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Lines held while the writer is slow; past this, new lines are dropped (and counted).
const QUEUE_LINES: usize = 4096;

struct Shared {
    dropped: AtomicU64,
    /// Lines queued and not yet written (or dropped) by the writer thread.
    queued: AtomicU64,
}

/// The `MakeWriter` the tracing subscriber formats each event into.
#[derive(Clone)]
pub struct LogWriter {
    tx: SyncSender<Vec<u8>>,
    shared: Arc<Shared>,
}

static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();

impl LogWriter {
    /// Start the writer thread for `sink` (standard error, a file).
    pub fn start(sink: Box<dyn Write + Send>) -> LogWriter {
        let (tx, rx) = sync_channel(QUEUE_LINES);
        let shared = Arc::new(Shared {
            dropped: AtomicU64::new(0),
            queued: AtomicU64::new(0),
        });
        let _ = SHARED.set(shared.clone());
        let thread_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("log".into())
            .spawn(move || write_lines(rx, sink, &thread_shared));
        if spawned.is_err() {
            // No writer: every line is dropped (and counted), which is still no panic.
        }
        LogWriter { tx, shared }
    }

    fn queue(&self, line: &[u8]) {
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(line.to_vec()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                self.shared.dropped.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

impl Write for LogWriter {
    /// The formatter writes each event in one call: queue it whole, never fail.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.queue(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        self.clone()
    }
}

fn write_lines(rx: Receiver<Vec<u8>>, mut out: Box<dyn Write + Send>, shared: &Shared) {
    for line in rx {
        let dropped = shared.dropped.swap(0, Ordering::SeqCst);
        let mut ok = true;
        if dropped > 0 {
            let notice = format!("{dropped} log lines dropped (the log could not be written)\n");
            if out.write_all(notice.as_bytes()).is_err() {
                shared.dropped.fetch_add(dropped, Ordering::SeqCst);
                ok = false;
            }
        }
        if !ok || out.write_all(&line).and_then(|_| out.flush()).is_err() {
            shared.dropped.fetch_add(1, Ordering::SeqCst);
        }
        shared.queued.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Wait (at most `timeout`) until the queued log lines are written: before the process
/// exits, so that its last lines (why it stops) are not lost.
pub fn flush(timeout: Duration) {
    let Some(shared) = SHARED.get() else { return };
    let deadline = Instant::now() + timeout;
    while shared.queued.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Lines dropped so far and not yet reported.
pub fn dropped() -> u64 {
    SHARED.get().map_or(0, |s| s.dropped.load(Ordering::SeqCst))
}

/// Print a line on standard error for a person (a command-line tool's message); a failed
/// write is ignored, as `eprintln!` would panic on it.
pub fn say(line: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Print a line on standard output, ignoring a failed write (a closed pipe).
pub fn out(line: impl std::fmt::Display) {
    let mut o = std::io::stdout();
    let _ = writeln!(o, "{line}").and_then(|_| o.flush());
}

/// Logs for a node program: one line per event, to standard error or a file. `NEO_LOG`
/// (or `RUST_LOG`) sets the filter; the default is `info`. Also installs the panic hook.
pub fn init_logging(logfile: Option<&Path>) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("NEO_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (sink, ansi): (Box<dyn Write + Send>, bool) = match logfile {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
            (Box::new(file), false)
        }
        None => {
            use std::io::IsTerminal;
            (Box::new(std::io::stderr()), std::io::stderr().is_terminal())
        }
    };
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        // Our writer never fails; this also keeps the formatter from `eprintln!`.
        .log_internal_errors(false)
        .with_writer(LogWriter::start(sink))
        .finish();
    tracing::subscriber::set_global_default(subscriber).map_err(|e| e.to_string())?;
    exit_on_panic();
    Ok(())
}

/// A panic anywhere in a node process (a task, a thread) ends the process with status 101
/// after logging it: otherwise a panicked connection task or signal handler leaves a node
/// that holds its port but no longer serves or stops.
pub fn exit_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        tracing::error!("panic: {info}; exiting");
        flush(Duration::from_secs(1));
        std::process::exit(101);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A log destination that fails while `failing` is set.
    #[derive(Clone, Default)]
    struct Flaky(Arc<Mutex<(bool, Vec<u8>)>>);

    impl Write for Flaky {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut s = self.0.lock().unwrap();
            if s.0 {
                return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
            s.1.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn settle(w: &LogWriter) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while w.shared.queued.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn failed_lines_are_dropped_counted_and_reported_once_writing_works() {
        let sink = Flaky::default();
        let mut w = LogWriter::start(Box::new(sink.clone()));
        w.write_all(b"first\n").unwrap();
        settle(&w);
        sink.0.lock().unwrap().0 = true;
        for _ in 0..3 {
            // Never an error for the caller.
            w.write_all(b"lost\n").unwrap();
        }
        settle(&w);
        assert_eq!(w.shared.dropped.load(Ordering::SeqCst), 3);
        sink.0.lock().unwrap().0 = false;
        w.write_all(b"back\n").unwrap();
        w.write_all(b"more\n").unwrap();
        settle(&w);
        let text = String::from_utf8(sink.0.lock().unwrap().1.clone()).unwrap();
        assert_eq!(
            text,
            "first\n3 log lines dropped (the log could not be written)\nback\nmore\n"
        );
    }
}
