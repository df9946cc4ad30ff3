//! What an exec does in a fake guest: its code is a script of steps, one per
//! line, instead of a program.
//!
//! | step | what the "process" does |
//! |---|---|
//! | `echo:<text>` | writes `<text>` and a newline to stdout |
//! | `stderr:<text>` | writes `<text>` and a newline to stderr |
//! | `bytes:<hex>` | writes raw bytes to stdout (non-UTF-8 output) |
//! | `flood:<n>` | writes `n` bytes of `x` to stdout |
//! | `cat` | copies stdin, once the host closes it, to stdout |
//! | `sleep:<ms>` | waits |
//! | `block` | waits until the test releases blocked execs |
//! | `exit:<n>` | ends with status `n` |
//! | `signal:<n>` | dies by signal `n` (status 128 + `n`) |
//! | `linger` | leaves a child that keeps writing `lingering` to stdout after the process ends |
//!
//! Running off the end exits 0; code that is not a script exits 127 with a
//! message on stderr, like a shell that finds no such command. As in the real
//! agent, output beyond the exec's cap is dropped and flagged, a timeout
//! kills with SIGKILL (status 137, `timed_out`), any signal from the host
//! kills with that signal, and a host that goes away ends the exec with no
//! answer. Output of a lingering child is drained, once the process ended,
//! for the request's `drain_limit_ms` (the shared default when 0) before
//! the answer. A batch exec (`exec-batch`) takes its stdin with the start
//! and gets its output (up to the shared hold per stream), pid and warm flag
//! in the exit, as from the real agent. Nothing here touches a real process.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use emberd_proto::boundary::MAX_BATCH_HELD_BYTES;
use emberd_proto::v1::{exec_input, exec_output, ExecExit, ExecInput, ExecOutput, ExecStarted};
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tonic::Status;

/// Output forwarded per stream when the host asks for no cap (the real agent's).
const DEFAULT_OUTPUT_LIMIT: u64 = 16 * 1024 * 1024;
/// Largest chunk of output in one message (the real agent's).
const CHUNK: usize = 64 * 1024;
const SIGKILL: i32 = 9;

/// One step of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Echo(String),
    Stderr(String),
    Bytes(Vec<u8>),
    Flood(u64),
    Cat,
    Sleep(Duration),
    Block,
    Exit(i32),
    Signal(i32),
    Linger,
}

/// How often a lingering child writes.
const LINGER_EVERY: Duration = Duration::from_millis(100);

/// Reads `code` as a script; the error names the first line that is not a step.
pub fn parse(code: &[u8]) -> Result<Vec<Step>, String> {
    let text = String::from_utf8_lossy(code);
    let mut steps = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (verb, arg) = line.split_once(':').unwrap_or((line, ""));
        let number = |what: &str| {
            arg.trim()
                .parse::<i64>()
                .map_err(|_| format!("{what} needs a number, got {arg:?}"))
        };
        let step = match verb {
            "echo" => Step::Echo(arg.to_owned()),
            "stderr" => Step::Stderr(arg.to_owned()),
            "bytes" => Step::Bytes(hex::decode(arg.trim()).map_err(|e| format!("bytes: {e}"))?),
            "flood" => Step::Flood(number("flood")?.max(0).unsigned_abs()),
            "cat" => Step::Cat,
            "sleep" => Step::Sleep(Duration::from_millis(
                number("sleep")?.max(0).unsigned_abs(),
            )),
            "block" => Step::Block,
            "linger" => Step::Linger,
            "exit" => Step::Exit(i32::try_from(number("exit")?).unwrap_or(i32::MAX)),
            "signal" => Step::Signal(i32::try_from(number("signal")?).unwrap_or(SIGKILL)),
            _ => return Err(format!("not a fake-guest step: {line:?}")),
        };
        steps.push(step);
    }
    Ok(steps)
}

/// What a script run needs from its guest.
pub struct ExecContext {
    /// The "pid" reported in `started`.
    pub pid: u32,
    /// Changes when the test releases blocked execs.
    pub release: watch::Receiver<u64>,
    /// Execs waiting in `block`, across the backend.
    pub blocked: Arc<AtomicUsize>,
    /// Execs running, in this guest and across the backend.
    pub running: [Arc<AtomicUsize>; 2],
}

/// How a run ended.
enum End {
    Exit(i32),
    Signal(i32),
    TimedOut,
    HostGone,
}

/// Runs one exec whose `start` came first on `input`; the answer goes to
/// `out`, ending with exactly one `exit` unless the host went away.
pub async fn run(
    start: emberd_proto::v1::ExecStart,
    input: impl Stream<Item = Result<ExecInput, Status>> + Send + Unpin + 'static,
    out: mpsc::Sender<Result<ExecOutput, Status>>,
    context: ExecContext,
) {
    let ExecContext {
        pid,
        mut release,
        blocked,
        running,
    } = context;
    let received = Instant::now();
    let _running = Counted::enter(&running);
    let limit = match start.output_limit_bytes {
        0 => DEFAULT_OUTPUT_LIMIT,
        n => n,
    };
    let mut output = Output::new(out.clone(), limit);
    let warm = !start.warm_language.is_empty();
    // As the real agent: a batch exec's start fields and the end of its
    // output go with its exit.
    if start.batch_output {
        output.held = Some([Vec::new(), Vec::new()]);
    } else {
        output
            .send(exec_output::Kind::Started(ExecStarted { pid, warm }))
            .await;
    }
    let (stdin_tx, stdin) = watch::channel(Stdin {
        data: start.stdin.clone(),
        closed: start.close_stdin,
    });
    let (signal_tx, mut signals) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_input(input, stdin_tx, signal_tx));
    release.borrow_and_update();
    let deadline = (start.timeout_ms > 0).then(|| Duration::from_millis(start.timeout_ms));
    let lingering = AtomicBool::new(false);
    let end = {
        let script = async {
            match parse(&start.code) {
                Ok(steps) => {
                    lingering.store(steps.contains(&Step::Linger), Ordering::SeqCst);
                    run_steps(&steps, &mut output, stdin, &mut release, &blocked).await
                }
                Err(message) => {
                    output
                        .write(Fd::Stderr, format!("{message}\n").as_bytes())
                        .await;
                    End::Exit(127)
                }
            }
        };
        let timeout = async {
            match deadline {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            end = script => end,
            () = timeout => End::TimedOut,
            Some(signal) = signals.recv() => signal.map_or(End::HostGone, End::Signal),
            () = out.closed() => End::HostGone,
        }
    };
    reader.abort();
    if lingering.load(Ordering::SeqCst) && !matches!(end, End::HostGone) {
        let limit = match start.drain_limit_ms {
            0 => emberd_proto::boundary::DEFAULT_EXEC_DRAIN_LIMIT_MS,
            n => n,
        };
        let drained = async {
            let until = Instant::now() + Duration::from_millis(limit);
            while Instant::now() < until {
                output.write(Fd::Stdout, b"lingering\n").await;
                tokio::time::sleep(
                    LINGER_EVERY.min(until.saturating_duration_since(Instant::now())),
                )
                .await;
            }
        };
        tokio::select! {
            () = drained => {}
            () = out.closed() => return,
        }
    }
    let (exit_code, signal, timed_out) = match end {
        End::HostGone => return,
        End::Exit(code) => (code, 0, false),
        End::Signal(signal) => (128 + signal, signal, false),
        End::TimedOut => (128 + SIGKILL, SIGKILL, true),
    };
    let exit = ExecExit {
        exit_code,
        signal,
        timed_out,
        stdout_truncated: output.truncated[0],
        stderr_truncated: output.truncated[1],
        duration_us: u64::try_from(received.elapsed().as_micros()).unwrap_or(u64::MAX),
        error: String::new(),
        ..ExecExit::default()
    };
    let exit = match output.held.take() {
        Some([stdout, stderr]) => ExecExit {
            stdout,
            stderr,
            pid,
            warm,
            ..exit
        },
        None => exit,
    };
    output.send(exec_output::Kind::Exit(exit)).await;
}

async fn run_steps(
    steps: &[Step],
    output: &mut Output,
    mut stdin: watch::Receiver<Stdin>,
    release: &mut watch::Receiver<u64>,
    blocked: &Arc<AtomicUsize>,
) -> End {
    for step in steps {
        match step {
            Step::Echo(text) => {
                output
                    .write(Fd::Stdout, format!("{text}\n").as_bytes())
                    .await
            }
            Step::Stderr(text) => {
                output
                    .write(Fd::Stderr, format!("{text}\n").as_bytes())
                    .await
            }
            Step::Bytes(bytes) => output.write(Fd::Stdout, bytes).await,
            Step::Flood(n) => output.flood(*n).await,
            Step::Cat => {
                let data = match stdin.wait_for(|s| s.closed).await {
                    Ok(stdin) => stdin.data.clone(),
                    Err(_) => Vec::new(),
                };
                output.write(Fd::Stdout, &data).await;
            }
            Step::Sleep(duration) => tokio::time::sleep(*duration).await,
            Step::Block => {
                let _blocked = Counted::enter(std::slice::from_ref(blocked));
                if release.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            Step::Linger => {}
            Step::Exit(code) => return End::Exit(*code),
            Step::Signal(signal) => return End::Signal(*signal),
        }
    }
    End::Exit(0)
}

#[derive(Debug, Default, Clone)]
struct Stdin {
    data: Vec<u8>,
    closed: bool,
}

/// Takes the host's stdin, close and signals; `None` on `signals` means the
/// host's stream broke.
async fn read_input(
    mut input: impl Stream<Item = Result<ExecInput, Status>> + Unpin,
    stdin: watch::Sender<Stdin>,
    signals: mpsc::UnboundedSender<Option<i32>>,
) {
    loop {
        match input.next().await {
            Some(Ok(ExecInput { kind: Some(kind) })) => match kind {
                exec_input::Kind::Stdin(data) => {
                    stdin.send_modify(|s| {
                        if !s.closed {
                            s.data.extend_from_slice(&data);
                        }
                    });
                }
                exec_input::Kind::CloseStdin(_) => stdin.send_modify(|s| s.closed = true),
                exec_input::Kind::Signal(number) => {
                    let _ = signals.send(Some(number));
                }
                exec_input::Kind::Start(_) | exec_input::Kind::Resize(_) => {}
            },
            Some(Ok(ExecInput { kind: None })) => {}
            // The host half-closed its side: no more stdin.
            None => {
                stdin.send_modify(|s| s.closed = true);
                return;
            }
            Some(Err(_)) => {
                let _ = signals.send(None);
                return;
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Fd {
    Stdout = 0,
    Stderr = 1,
}

/// The output side of one exec, capped per stream like the real agent's.
struct Output {
    out: mpsc::Sender<Result<ExecOutput, Status>>,
    limit: u64,
    sent: [u64; 2],
    truncated: [bool; 2],
    /// A batch exec's output held back for its exit (stdout, stderr).
    held: Option<[Vec<u8>; 2]>,
}

impl Output {
    fn new(out: mpsc::Sender<Result<ExecOutput, Status>>, limit: u64) -> Self {
        Output {
            out,
            limit,
            sent: [0; 2],
            truncated: [false; 2],
            held: None,
        }
    }

    async fn send(&self, kind: exec_output::Kind) {
        // A host that went away is noticed by the caller's select.
        let _ = self.out.send(Ok(ExecOutput { kind: Some(kind) })).await;
    }

    /// Forwards what fits under the cap and drops the rest.
    async fn write(&mut self, fd: Fd, data: &[u8]) {
        let i = fd as usize;
        let room = usize::try_from(self.limit.saturating_sub(self.sent[i])).unwrap_or(usize::MAX);
        let take = room.min(data.len());
        self.truncated[i] |= take < data.len();
        self.sent[i] += take as u64;
        let data = &data[..take];
        if let Some(held) = self.held.as_mut().map(|h| &mut h[i]) {
            if held.len() + data.len() <= MAX_BATCH_HELD_BYTES {
                held.extend_from_slice(data);
                return;
            }
            // Over the hold: what was held goes first, then this piece.
            let first = std::mem::take(held);
            let kind = match fd {
                Fd::Stdout => exec_output::Kind::Stdout(first),
                Fd::Stderr => exec_output::Kind::Stderr(first),
            };
            self.send(kind).await;
        }
        for chunk in data.chunks(CHUNK) {
            let kind = match fd {
                Fd::Stdout => exec_output::Kind::Stdout(chunk.to_vec()),
                Fd::Stderr => exec_output::Kind::Stderr(chunk.to_vec()),
            };
            self.send(kind).await;
        }
    }

    async fn flood(&mut self, mut n: u64) {
        let chunk = vec![b'x'; CHUNK];
        while n > 0 {
            let room = self.limit.saturating_sub(self.sent[0]);
            if room == 0 {
                // The rest would be read and dropped.
                self.truncated[0] = true;
                return;
            }
            let take = n.min(CHUNK as u64);
            self.write(Fd::Stdout, &chunk[..take as usize]).await;
            n -= take;
        }
    }
}

/// Counts itself in, in each of its counters, while alive.
struct Counted<'a>(&'a [Arc<AtomicUsize>]);

impl<'a> Counted<'a> {
    fn enter(counters: &'a [Arc<AtomicUsize>]) -> Self {
        for counter in counters {
            counter.fetch_add(1, Ordering::SeqCst);
        }
        Counted(counters)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        for counter in self.0 {
            counter.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_read_one_step_per_line() {
        let steps = parse(b"echo:hi there\nstderr:oops\n\nbytes:ff41\nflood:10\ncat\nsleep:5\nblock\nlinger\nsignal:15\nexit:3").unwrap();
        assert_eq!(
            steps,
            vec![
                Step::Echo("hi there".into()),
                Step::Stderr("oops".into()),
                Step::Bytes(vec![0xff, 0x41]),
                Step::Flood(10),
                Step::Cat,
                Step::Sleep(Duration::from_millis(5)),
                Step::Block,
                Step::Linger,
                Step::Signal(15),
                Step::Exit(3),
            ]
        );
        assert!(parse(b"print(6*7)").is_err());
        assert!(parse(b"exit:x").is_err());
        assert!(parse(b"bytes:zz").is_err());
    }
}
