//! One exec: a process in its own group, its stdio streamed, its end reported.
//!
//! The process gets a clean environment, stdin piped, stdout and stderr
//! forwarded in chunks up to a per-stream cap (beyond it output is read and
//! dropped, so the process never blocks on a full pipe). A timeout, a host
//! that goes away, or the main process exiting SIGKILLs the whole process
//! group. Exactly one `exit` message ends the output stream.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use emberd_proto::v1::{
    exec_input, exec_output, ExecExit, ExecInput, ExecOutput, ExecStart, ExecStarted,
};
use emberd_proto::warm::WarmLanguage;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::forkserver::ForkServer;
use crate::node_spare::NodeSpares;
use crate::process_env::default_env;
use crate::reaper::{Exit, Reaper};
use crate::warm::WarmChild;

/// Output forwarded per stream when the host asks for no particular cap.
pub const DEFAULT_OUTPUT_LIMIT: u64 = 16 * 1024 * 1024;
/// Largest chunk of output in one message.
const CHUNK: usize = 64 * 1024;
/// Once the process group is gone, how long a reader waits for more output
/// before it takes the pipe as abandoned: a process that escaped the group
/// may hold it open forever.
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// Once the process group is gone, how long a reader may go on at most
/// (including time spent waiting for the host to take the output).
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

static NEXT_CODE_FILE: AtomicU64 = AtomicU64::new(0);

/// Where execs run.
#[derive(Debug, Clone)]
pub struct ExecEnv {
    /// Working directory when the request names none.
    pub default_cwd: PathBuf,
    /// Directory for code files.
    pub code_dir: PathBuf,
    /// Prefix applied to a requested cwd (host mode: the served root).
    pub root: Option<PathBuf>,
    /// The pre-started Python, when there is one.
    pub python: Option<Arc<ForkServer>>,
    /// The spare Node, when there is node.
    pub node: Option<Arc<NodeSpares>>,
}

/// Validates the start message and launches the exec; output flows into `out`.
pub async fn run(
    env: Arc<ExecEnv>,
    reaper: Reaper,
    start: ExecStart,
    input: Streaming<ExecInput>,
    out: mpsc::Sender<Result<ExecOutput, Status>>,
    running: Arc<std::sync::atomic::AtomicU32>,
    received: Instant,
) {
    running.fetch_add(1, Ordering::SeqCst);
    let mut exit = match launch(&env, &reaper, &start).await {
        Ok(launched) => supervise(launched, &start, input, &out).await,
        Err(error) => ExecExit {
            exit_code: -1,
            error,
            ..ExecExit::default()
        },
    };
    running.fetch_sub(1, Ordering::SeqCst);
    // The agent's whole share of the exec: from the request reaching it to
    // its answer (writing the code file, starting, running, draining output).
    exit.duration_us = u64::try_from(received.elapsed().as_micros()).unwrap_or(u64::MAX);
    let _ = out
        .send(Ok(ExecOutput {
            kind: Some(exec_output::Kind::Exit(exit)),
        }))
        .await;
    // The next spare starts in a task queued behind the connection's, so
    // the answer is written before the agent forks a new node.
    if WarmLanguage::from_wire(&start.warm_language) == Some(WarmLanguage::Node) {
        if let Some(node) = env.node.clone() {
            tokio::spawn(async move { node.replenish() });
        }
    }
}

struct Launched {
    pid: i32,
    warm: bool,
    exit: tokio::sync::oneshot::Receiver<Exit>,
    stdin: Option<pipe::Sender>,
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
    code_file: Option<PathBuf>,
}

async fn launch(env: &ExecEnv, reaper: &Reaper, start: &ExecStart) -> Result<Launched, String> {
    let cwd = if start.cwd.is_empty() {
        env.default_cwd.clone()
    } else {
        match &env.root {
            Some(root) => {
                let cwd = Path::new(&start.cwd);
                if cwd
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
                {
                    return Err(format!("cwd {:?} leaves the served root", start.cwd));
                }
                root.join(cwd.strip_prefix("/").unwrap_or(cwd))
            }
            None => PathBuf::from(&start.cwd),
        }
    };
    let (argv, code_file) = if !start.argv.is_empty() {
        (start.argv.clone(), None)
    } else if !start.interpreter.is_empty() {
        let file = write_code_file(&env.code_dir, &start.code, &start.file_suffix)
            .map_err(|e| format!("cannot write the code file: {e}"))?;
        let mut argv = start.interpreter.clone();
        argv.push(file.display().to_string());
        (argv, Some(file))
    } else {
        return Err("exec needs argv or an interpreter".into());
    };
    if let Some(child) = match &code_file {
        Some(file) => warm_child(env, start, file, &cwd).await,
        None => None,
    } {
        let pipes = (
            pipe::Sender::from_owned_fd(child.stdin),
            pipe::Receiver::from_owned_fd(child.stdout),
            pipe::Receiver::from_owned_fd(child.stderr),
        );
        if let (Ok(stdin), Ok(stdout), Ok(stderr)) = pipes {
            return Ok(Launched {
                pid: child.pid,
                warm: true,
                exit: child.exit,
                stdin: Some(stdin),
                stdout,
                stderr,
                code_file,
            });
        }
        let _ = killpg(Pid::from_raw(child.pid), Signal::SIGKILL);
    }
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .current_dir(&cwd)
        .env_clear()
        .envs(default_env())
        .envs(&start.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let cleanup = |e: String| {
        if let Some(file) = &code_file {
            let _ = std::fs::remove_file(file);
        }
        e
    };
    let (mut child, exit) = reaper
        .spawn(&mut command)
        .map_err(|e| cleanup(format!("failed to start {}: {e}", argv[0])))?;
    let to_fd = |fd: Option<OwnedFd>| fd.ok_or_else(|| "missing pipe".to_owned());
    let stdin = to_fd(child.stdin.take().map(OwnedFd::from))
        .and_then(|fd| pipe::Sender::from_owned_fd(fd).map_err(|e| e.to_string()));
    let stdout = to_fd(child.stdout.take().map(OwnedFd::from))
        .and_then(|fd| pipe::Receiver::from_owned_fd(fd).map_err(|e| e.to_string()));
    let stderr = to_fd(child.stderr.take().map(OwnedFd::from))
        .and_then(|fd| pipe::Receiver::from_owned_fd(fd).map_err(|e| e.to_string()));
    let pid = child.id() as i32;
    match (stdin, stdout, stderr) {
        (Ok(stdin), Ok(stdout), Ok(stderr)) => Ok(Launched {
            pid,
            warm: false,
            exit,
            stdin: Some(stdin),
            stdout,
            stderr,
            code_file,
        }),
        (a, b, c) => {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            let reason = [a.err(), b.err(), c.err()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", ");
            Err(cleanup(format!(
                "cannot set up the process's pipes: {reason}"
            )))
        }
    }
}

/// The exec's process from the pre-started interpreter of
/// `start.warm_language`, when there is one and the exec's environment does
/// not change how that interpreter starts up (which it already has).
async fn warm_child(
    env: &ExecEnv,
    start: &ExecStart,
    file: &Path,
    cwd: &Path,
) -> Option<WarmChild> {
    // Variables an interpreter reads as it starts, which the pre-started one
    // has done already.
    let language = WarmLanguage::from_wire(&start.warm_language)?;
    let startup_prefixes: &[&str] = match language {
        WarmLanguage::Python => &["PYTHON"],
        WarmLanguage::Node => &["NODE_", "UV_"],
    };
    if start
        .env
        .keys()
        .any(|key| startup_prefixes.iter().any(|p| key.starts_with(p)))
    {
        return None;
    }
    let mut vars = default_env();
    vars.extend(start.env.clone());
    let launched = match language {
        WarmLanguage::Python => {
            let python = env.python.as_ref().filter(|p| p.ready())?;
            python.launch(file.to_owned(), cwd.to_owned(), vars).await
        }
        WarmLanguage::Node => {
            let node = env.node.as_ref().filter(|n| n.has_spare())?;
            node.launch(file, cwd, &vars).await
        }
    };
    launched
        .inspect_err(|e| {
            eprintln!("emberd-init: warm {language} unavailable ({e}); running one-shot")
        })
        .ok()
}

fn write_code_file(dir: &Path, code: &[u8], suffix: &str) -> std::io::Result<PathBuf> {
    let suffix: String = suffix
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .take(16)
        .collect();
    let n = NEXT_CODE_FILE.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("emberd-exec-{}-{n}{suffix}", std::process::id()));
    std::fs::write(&path, code)?;
    Ok(path)
}

async fn supervise(
    mut launched: Launched,
    start: &ExecStart,
    mut input: Streaming<ExecInput>,
    out: &mpsc::Sender<Result<ExecOutput, Status>>,
) -> ExecExit {
    let pgid = Pid::from_raw(launched.pid);
    let limit = if start.output_limit_bytes == 0 {
        DEFAULT_OUTPUT_LIMIT
    } else {
        start.output_limit_bytes
    };
    let _ = out
        .send(Ok(ExecOutput {
            kind: Some(exec_output::Kind::Started(ExecStarted {
                pid: launched.pid as u32,
                warm: launched.warm,
            })),
        }))
        .await;
    let (group_gone, gone) = tokio::sync::watch::channel(false);
    let stdout_task = tokio::spawn(forward(
        launched.stdout,
        out.clone(),
        limit,
        true,
        gone.clone(),
    ));
    let stderr_task = tokio::spawn(forward(launched.stderr, out.clone(), limit, false, gone));

    // Input from the host: stdin, close, signals. A broken host stream kills.
    let (gone_tx, mut gone_rx) = tokio::sync::oneshot::channel::<()>();
    let mut stdin = launched.stdin.take();
    let input_task = tokio::spawn(async move {
        let mut gone_tx = Some(gone_tx);
        loop {
            match input.message().await {
                Ok(Some(ExecInput { kind: Some(kind) })) => match kind {
                    exec_input::Kind::Stdin(data) => {
                        if let Some(pipe) = stdin.as_mut() {
                            if pipe.write_all(&data).await.is_err() {
                                stdin = None;
                            }
                        }
                    }
                    exec_input::Kind::CloseStdin(_) => stdin = None,
                    exec_input::Kind::Signal(number) => {
                        if let Ok(signal) = Signal::try_from(number) {
                            let _ = killpg(pgid, signal);
                        }
                    }
                    exec_input::Kind::Start(_) => {}
                },
                Ok(Some(ExecInput { kind: None })) => {}
                // The host half-closed its side: no more stdin.
                Ok(None) => {
                    stdin = None;
                    std::future::pending::<()>().await;
                }
                Err(_) => {
                    if let Some(tx) = gone_tx.take() {
                        let _ = tx.send(());
                    }
                    return;
                }
            }
        }
    });

    let deadline = (start.timeout_ms > 0).then(|| Duration::from_millis(start.timeout_ms));
    let mut timed_out = false;
    let timeout = async {
        match deadline {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let mut exit_rx = launched.exit;
    let exit = tokio::select! {
        exit = &mut exit_rx => exit.ok(),
        () = timeout => {
            timed_out = true;
            let _ = killpg(pgid, Signal::SIGKILL);
            exit_rx.await.ok()
        }
        _ = &mut gone_rx => {
            let _ = killpg(pgid, Signal::SIGKILL);
            exit_rx.await.ok()
        }
        () = out.closed() => {
            let _ = killpg(pgid, Signal::SIGKILL);
            exit_rx.await.ok()
        }
    };
    // Whatever the main process left running in its group goes with it.
    let _ = killpg(pgid, Signal::SIGKILL);
    group_gone.send_replace(true);
    input_task.abort();
    let stdout_truncated = stdout_task.await.unwrap_or(false);
    let stderr_truncated = stderr_task.await.unwrap_or(false);
    if let Some(file) = launched.code_file.take() {
        let _ = std::fs::remove_file(file);
    }
    let (exit_code, signal) = match exit {
        Some(Exit::Code(code)) => (code, 0),
        Some(Exit::Signal(signal)) => (128 + signal, signal),
        None => (-1, 0),
    };
    ExecExit {
        exit_code,
        signal,
        timed_out,
        stdout_truncated,
        stderr_truncated,
        duration_us: 0,
        error: if exit.is_none() {
            "the process's exit status was lost".into()
        } else {
            String::new()
        },
    }
}

/// Forwards one output stream until EOF; returns whether it was cut at
/// `limit`. After `gone` turns true (the process group is dead) the reader
/// ends once the pipe stays idle for [`DRAIN_GRACE`] or [`DRAIN_LIMIT`] has
/// passed; what the group wrote before it died is still forwarded.
async fn forward(
    mut pipe: pipe::Receiver,
    out: mpsc::Sender<Result<ExecOutput, Status>>,
    limit: u64,
    is_stdout: bool,
    mut gone: tokio::sync::watch::Receiver<bool>,
) -> bool {
    let mut buf = vec![0u8; CHUNK];
    let mut sent: u64 = 0;
    let mut truncated = false;
    let mut gone_at: Option<Instant> = None;
    loop {
        let read = match gone_at {
            None => tokio::select! {
                read = pipe.read(&mut buf) => read,
                // A closed sender means the supervisor is gone too.
                _ = gone.wait_for(|gone| *gone) => {
                    gone_at = Some(Instant::now());
                    continue;
                }
            },
            Some(at) => {
                let left = DRAIN_LIMIT.saturating_sub(at.elapsed());
                if left.is_zero() {
                    return truncated;
                }
                match tokio::time::timeout(DRAIN_GRACE.min(left), pipe.read(&mut buf)).await {
                    Ok(read) => read,
                    Err(_idle) => return truncated,
                }
            }
        };
        let n = match read {
            Ok(0) | Err(_) => return truncated,
            Ok(n) => n,
        };
        let room = usize::try_from(limit.saturating_sub(sent)).unwrap_or(usize::MAX);
        let take = n.min(room);
        if take < n {
            truncated = true;
        }
        if take == 0 {
            continue;
        }
        sent += take as u64;
        let data = buf[..take].to_vec();
        let kind = if is_stdout {
            exec_output::Kind::Stdout(data)
        } else {
            exec_output::Kind::Stderr(data)
        };
        if out.send(Ok(ExecOutput { kind: Some(kind) })).await.is_err() {
            return truncated;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn output_pipe() -> (std::fs::File, pipe::Receiver) {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        (
            std::fs::File::from(write),
            pipe::Receiver::from_owned_fd(read).unwrap(),
        )
    }

    fn data(message: ExecOutput) -> Vec<u8> {
        match message.kind {
            Some(exec_output::Kind::Stdout(data)) => data,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn output_written_before_the_group_died_reaches_a_slow_host() {
        let (mut writer, reader) = output_pipe();
        let (tx, mut rx) = mpsc::channel(1);
        // The host has not taken the last message yet: the channel is full.
        tx.send(Ok(ExecOutput {
            kind: Some(exec_output::Kind::Stdout(b"first".to_vec())),
        }))
        .await
        .unwrap();
        writer.write_all(&[7u8; 60_000]).unwrap();
        let (gone_tx, gone) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(forward(reader, tx, u64::MAX, true, gone));
        gone_tx.send_replace(true);
        // Longer than the grace: the reader is waiting on the host, not the pipe.
        tokio::time::sleep(DRAIN_GRACE * 3).await;
        assert_eq!(data(rx.recv().await.unwrap().unwrap()), b"first");
        let mut received = 0;
        while let Some(message) = rx.recv().await {
            received += data(message.unwrap()).len();
        }
        assert_eq!(received, 60_000);
        // The write end is still open (as if a process escaped the group),
        // yet the reader has ended.
        assert!(!task.await.unwrap());
        drop(writer);
    }

    #[tokio::test]
    async fn output_beyond_the_limit_is_drained_and_flagged() {
        let (mut writer, reader) = output_pipe();
        let (tx, mut rx) = mpsc::channel(64);
        let (_gone_tx, gone) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(forward(reader, tx, 1000, true, gone));
        // Far more than a pipe holds: the writer only finishes if the
        // reader keeps draining past the limit.
        let written = tokio::task::spawn_blocking(move || {
            for _ in 0..64 {
                writer.write_all(&[1u8; 16 * 1024]).unwrap();
            }
        });
        written.await.unwrap();
        assert!(task.await.unwrap());
        let mut received = 0;
        while let Some(message) = rx.recv().await {
            received += data(message.unwrap()).len();
        }
        assert_eq!(received, 1000);
    }
}
