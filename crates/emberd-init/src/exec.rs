//! One exec: a process in its own group, its stdio streamed, its end reported.
//!
//! The process gets a clean environment, stdin piped, stdout and stderr
//! forwarded by [`crate::output`]. In the guest it runs as the exec's user
//! ([`crate::user`]) in a cgroup of its own ([`crate::cgroup`]). A timeout,
//! a host that goes away, or the main process exiting SIGKILLs the whole
//! process group (through whoever reaps its leader, never by a pid that may
//! have been reused) and, in the guest, everything in the exec's cgroup.
//! Exactly one `exit` message ends the output stream. An exec with `pty`
//! runs one-shot on a terminal of its own ([`crate::pty`]) instead of pipes.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use emberd_proto::boundary::{MAX_BATCH_HELD_BYTES, SANDBOX_HOME};
use emberd_proto::v1::{
    exec_input, exec_output, ExecExit, ExecInput, ExecOutput, ExecStart, ExecStarted,
};
use emberd_proto::warm::WarmLanguage;
use nix::sys::signal::Signal;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::cgroup::{Cgroups, ExecCgroup};
use crate::code_file::{write_code_file, CodeFile};
use crate::forkserver::ForkServer;
use crate::group::Group;
use crate::node_spare::NodeSpares;
use crate::output::{drain_limit, forward, Forwarded};
use crate::process_env::default_env;
use crate::pty::{self, Pty};
use crate::reaper::{Exit, Reaper};
use crate::user::{become_user, User};
use crate::warm_pick::warm_child;

/// Output forwarded per stream when the host asks for no particular cap.
pub const DEFAULT_OUTPUT_LIMIT: u64 = 16 * 1024 * 1024;

/// Where execs run.
#[derive(Debug, Clone)]
pub struct ExecEnv {
    /// Working directory when the request names none (for root, or for
    /// everyone when the agent does not switch users).
    pub default_cwd: PathBuf,
    /// Directory for code files (readable by the sandbox user, writable by
    /// the agent alone, so that a full disk does not stop the next exec).
    pub code_dir: PathBuf,
    /// Prefix applied to a requested cwd (host mode: the served root).
    pub root: Option<PathBuf>,
    /// The pre-started Python, when there is one.
    pub python: Option<Arc<ForkServer>>,
    /// The spare Node, when there is node.
    pub node: Option<Arc<NodeSpares>>,
    /// Whether each exec runs as its user (the guest); as a host process
    /// the agent runs everything as itself.
    pub switch_users: bool,
    /// Per-exec cgroups, when the agent has them (the guest).
    pub cgroups: Option<Arc<Cgroups>>,
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
    group: Group,
    stdin: Option<pipe::Sender>,
    stdout: pipe::Receiver,
    /// `None` on a terminal, where stderr is stdout.
    stderr: Option<pipe::Receiver>,
    /// The terminal's master, for resizes.
    pty: Option<OwnedFd>,
    code_file: Option<PathBuf>,
    cgroup: Option<ExecCgroup>,
}

async fn launch(env: &ExecEnv, reaper: &Reaper, start: &ExecStart) -> Result<Launched, String> {
    let user = User::from_wire(&start.user)?;
    let cwd = if start.cwd.is_empty() {
        if env.switch_users && user == User::Sandbox {
            PathBuf::from(SANDBOX_HOME)
        } else {
            env.default_cwd.clone()
        }
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
        (start.argv.clone(), CodeFile(None))
    } else if !start.interpreter.is_empty() {
        let owner = if env.switch_users { user.ids() } else { None };
        let file = write_code_file(&env.code_dir, &start.code, &start.file_suffix, owner)
            .map_err(|e| format!("cannot write the code file: {e}"))?;
        let mut argv = start.interpreter.clone();
        argv.push(file.display().to_string());
        (argv, CodeFile(Some(file)))
    } else {
        return Err("exec needs argv or an interpreter".into());
    };
    let cgroup = match &env.cgroups {
        Some(cgroups) => Some(
            cgroups
                .create()
                .map_err(|e| format!("cannot make the exec's cgroup: {e}"))?,
        ),
        None => None,
    };
    let mut vars = default_env();
    if env.switch_users {
        vars.extend(user.env());
    }
    if start.pty.is_some() {
        vars.insert("TERM".into(), "xterm-256color".into());
    }
    vars.extend(start.env.clone());
    // A terminal needs a process of its own: never the warm interpreters.
    let warm = match &code_file.0 {
        Some(file) if start.pty.is_none() => {
            let as_user = env.switch_users.then_some(user);
            warm_child(env, start, file, &cwd, &vars, as_user, cgroup.as_ref()).await
        }
        _ => None,
    };
    if let Some(child) = warm {
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
                group: child.group,
                stdin: Some(stdin),
                stdout,
                stderr: Some(stderr),
                pty: None,
                code_file: code_file.take(),
                cgroup,
            });
        }
        child.group.signal(Signal::SIGKILL);
        if let Some(cgroup) = &cgroup {
            cgroup.kill();
        }
    }
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .current_dir(&cwd)
        .env_clear()
        .envs(&vars);
    let terminal = match &start.pty {
        Some(size) => {
            let terminal = Pty::open(size)
                .and_then(|t| t.attach(&mut command).map(|()| t))
                .map_err(|e| format!("cannot open a terminal: {e}"))?;
            Some(terminal)
        }
        None => {
            command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            None
        }
    };
    if env.switch_users {
        let procs = cgroup.as_ref().map(ExecCgroup::procs_fd);
        // SAFETY: `become_user` makes only async-signal-safe calls, and the
        // cgroup's `cgroup.procs` stays open until spawn has returned.
        unsafe {
            command.pre_exec(move || become_user(user, procs));
        }
    }
    let spawned = match terminal {
        Some(_) => reaper.spawn_session(&mut command),
        None => reaper.spawn_group(&mut command),
    };
    let (mut child, exit) = spawned.map_err(|e| format!("failed to start {}: {e}", argv[0]))?;
    // Closes the command's copies of the terminal's slave.
    drop(command);
    let pid = child.id() as i32;
    let group = Group::Agent {
        reaper: reaper.clone(),
        pid,
    };
    if let Some(terminal) = terminal {
        return match terminal.into_master() {
            Ok(master) => Ok(Launched {
                pid,
                warm: false,
                exit,
                group,
                stdin: Some(master.input),
                stdout: master.output,
                stderr: None,
                pty: Some(master.control),
                code_file: code_file.take(),
                cgroup,
            }),
            Err(e) => {
                group.signal(Signal::SIGKILL);
                Err(format!("cannot set up the terminal: {e}"))
            }
        };
    }
    let to_fd = |fd: Option<OwnedFd>| fd.ok_or_else(|| "missing pipe".to_owned());
    let stdin = to_fd(child.stdin.take().map(OwnedFd::from))
        .and_then(|fd| pipe::Sender::from_owned_fd(fd).map_err(|e| e.to_string()));
    let stdout = to_fd(child.stdout.take().map(OwnedFd::from))
        .and_then(|fd| pipe::Receiver::from_owned_fd(fd).map_err(|e| e.to_string()));
    let stderr = to_fd(child.stderr.take().map(OwnedFd::from))
        .and_then(|fd| pipe::Receiver::from_owned_fd(fd).map_err(|e| e.to_string()));
    match (stdin, stdout, stderr) {
        (Ok(stdin), Ok(stdout), Ok(stderr)) => Ok(Launched {
            pid,
            warm: false,
            exit,
            group,
            stdin: Some(stdin),
            stdout,
            stderr: Some(stderr),
            pty: None,
            code_file: code_file.take(),
            cgroup,
        }),
        (a, b, c) => {
            group.signal(Signal::SIGKILL);
            let reason = [a.err(), b.err(), c.err()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", ");
            Err(format!("cannot set up the process's pipes: {reason}"))
        }
    }
}

async fn supervise(
    launched: Launched,
    start: &ExecStart,
    mut input: Streaming<ExecInput>,
    out: &mpsc::Sender<Result<ExecOutput, Status>>,
) -> ExecExit {
    let limit = if start.output_limit_bytes == 0 {
        DEFAULT_OUTPUT_LIMIT
    } else {
        start.output_limit_bytes
    };
    let drain = drain_limit(start.drain_limit_ms);
    let Launched {
        pid,
        warm,
        exit: mut exit_rx,
        group,
        stdin,
        stdout,
        stderr,
        pty,
        code_file,
        cgroup,
    } = launched;
    // A batch exec's `started` fields go with its exit, and its output is
    // held back (within a bound) to go with it too.
    let batch = start.batch_output;
    if !batch {
        let _ = out
            .send(Ok(ExecOutput {
                kind: Some(exec_output::Kind::Started(ExecStarted {
                    pid: pid as u32,
                    warm,
                })),
            }))
            .await;
    }
    let hold = if batch { MAX_BATCH_HELD_BYTES } else { 0 };
    let (group_gone, gone) = tokio::sync::watch::channel(false);
    let stdout_task = tokio::spawn(forward(
        stdout,
        out.clone(),
        limit,
        true,
        gone.clone(),
        drain,
        hold,
    ));
    let stderr_task = match stderr {
        Some(stderr) => tokio::spawn(forward(
            stderr,
            out.clone(),
            limit,
            false,
            gone,
            drain,
            hold,
        )),
        None => tokio::spawn(async { Forwarded::default() }),
    };

    // Input from the host: stdin, close, signals. A broken host stream kills.
    let (gone_tx, mut gone_rx) = tokio::sync::oneshot::channel::<()>();
    let mut stdin = stdin;
    let signals = group.clone();
    let (inline_stdin, close_inline) = (start.stdin.clone(), start.close_stdin);
    let input_task = tokio::spawn(async move {
        let mut gone_tx = Some(gone_tx);
        // Stdin that came with the start goes first.
        if let Some(pipe) = stdin.as_mut().filter(|_| !inline_stdin.is_empty()) {
            if pipe.write_all(&inline_stdin).await.is_err() {
                stdin = None;
            }
        }
        if close_inline {
            close_stdin(&mut stdin, pty.is_some()).await;
        }
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
                    exec_input::Kind::CloseStdin(_) => close_stdin(&mut stdin, pty.is_some()).await,
                    exec_input::Kind::Signal(number) => {
                        if let Ok(signal) = Signal::try_from(number) {
                            signals.signal(signal);
                        }
                    }
                    exec_input::Kind::Resize(size) => {
                        if let Some(master) = &pty {
                            let _ = pty::resize(master, &size);
                        }
                    }
                    exec_input::Kind::Start(_) => {}
                },
                Ok(Some(ExecInput { kind: None })) => {}
                // The host half-closed its side: no more stdin.
                Ok(None) => {
                    close_stdin(&mut stdin, pty.is_some()).await;
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
    let kill = || {
        group.signal(Signal::SIGKILL);
        if let Some(cgroup) = &cgroup {
            cgroup.kill();
        }
    };
    let exit = tokio::select! {
        exit = &mut exit_rx => exit.ok(),
        () = timeout => {
            timed_out = true;
            kill();
            exit_rx.await.ok()
        }
        _ = &mut gone_rx => {
            kill();
            exit_rx.await.ok()
        }
        () = out.closed() => {
            kill();
            exit_rx.await.ok()
        }
    };
    // Whatever the main process left in its group went with it (killed by
    // its reaper before the leader was reaped); in the guest, so does
    // anything that left the group but not the exec's cgroup.
    if let Some(cgroup) = &cgroup {
        cgroup.kill();
    }
    group_gone.send_replace(true);
    input_task.abort();
    let stdout = stdout_task.await.unwrap_or_default();
    let stderr = stderr_task.await.unwrap_or_default();
    if let Some(file) = code_file {
        let _ = std::fs::remove_file(file);
    }
    drop(cgroup);
    let (exit_code, signal) = match exit {
        Some(Exit::Code(code)) => (code, 0),
        Some(Exit::Signal(signal)) => (128 + signal, signal),
        None => (-1, 0),
    };
    ExecExit {
        exit_code,
        signal,
        timed_out,
        stdout_truncated: stdout.truncated,
        stderr_truncated: stderr.truncated,
        duration_us: 0,
        error: if exit.is_none() {
            "the process's exit status was lost".into()
        } else {
            String::new()
        },
        stdout: stdout.held,
        stderr: stderr.held,
        pid: if batch { pid as u32 } else { 0 },
        warm: batch && warm,
    }
}

/// Ends the exec's input: closes the pipe or, on a terminal, writes its
/// end-of-file character (the master stays open for output and resizes).
async fn close_stdin(stdin: &mut Option<pipe::Sender>, terminal: bool) {
    if let (true, Some(master)) = (terminal, stdin.as_mut()) {
        let _ = master.write_all(&[pty::EOF_CHAR]).await;
    }
    *stdin = None;
}
