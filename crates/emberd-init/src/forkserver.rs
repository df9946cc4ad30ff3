//! The pre-started Python interpreter (`forkserver.py`) and how an exec
//! gets a child from it.
//!
//! The agent starts the fork server once (when `python3` exists), through
//! the reaper like any child. An exec that asks for the warm Python gets a
//! fresh process forked from it: the agent hands over the three pipe ends
//! over a Unix socket and learns the child's pid and, later, how it ended.
//! If the server is not there or refuses, the exec runs one-shot instead.
//!
//! The server runs as root, its socket in a directory only root can enter:
//! a child drops to the exec's user itself before it runs any code. The
//! server reaps its children, so signals for a child's group go through it
//! (on the exec's connection), never by pid from the agent.

use std::io::{IoSlice, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::group::Group;
use crate::process_env::default_env;
use crate::reaper::{Exit, Reaper};
use crate::user::User;
use crate::warm::{interpreter_and_script, prepare_interpreter, Request, WarmChild};

const SCRIPT: &str = include_str!("forkserver.py");
const STARTUP_BOUND: Duration = Duration::from_secs(30);

/// A running fork server.
#[derive(Debug)]
pub struct ForkServer {
    socket: PathBuf,
    alive: Arc<AtomicBool>,
}

#[derive(Deserialize)]
struct Reply {
    pid: Option<i32>,
    exit: Option<i32>,
    signal: Option<i32>,
    error: Option<String>,
}

impl ForkServer {
    /// Starts `python3` with the fork-server script, serving on
    /// `dir/emberd-python.sock` (`dir` must be the agent's alone). With
    /// `switch_users` (the guest) its children drop to their exec's user.
    /// Returns `None` when there is no python3.
    pub fn start(reaper: &Reaper, dir: &Path, switch_users: bool) -> Option<Arc<ForkServer>> {
        let (python, script) =
            interpreter_and_script("python3", dir, "emberd-forkserver.py", SCRIPT)?;
        let socket = dir.join("emberd-python.sock");
        let mut command = Command::new(python);
        command
            .arg("-I")
            .arg(&script)
            .arg(&socket)
            .env_clear()
            .envs(default_env())
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let parent = std::process::id() as libc::pid_t;
        // The server stays root (its children drop); in the guest it only
        // sheds the agent's OOM protection.
        let user = switch_users.then_some(User::Root);
        // SAFETY: `prepare_interpreter` makes only async-signal-safe calls.
        // As a host process the agent can be killed; its fork server must
        // not outlive it.
        unsafe {
            command.pre_exec(move || prepare_interpreter(user, parent));
        }
        let (_child, exit) = match reaper.spawn(&mut command) {
            Ok(spawned) => spawned,
            Err(e) => {
                eprintln!("emberd-init: cannot start the fork server: {e}");
                return None;
            }
        };
        let alive = Arc::new(AtomicBool::new(true));
        let watch = alive.clone();
        tokio::spawn(async move {
            let status = exit.await;
            watch.store(false, Ordering::SeqCst);
            eprintln!("emberd-init: the Python fork server ended ({status:?}); execs run one-shot");
        });
        Some(Arc::new(ForkServer { socket, alive }))
    }

    /// Waits (bounded) until the server listens.
    pub async fn wait_ready(&self) -> bool {
        let deadline = tokio::time::Instant::now() + STARTUP_BOUND;
        while tokio::time::Instant::now() < deadline && self.alive.load(Ordering::SeqCst) {
            if self.ready() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    /// True while the server runs and listens.
    pub fn ready(&self) -> bool {
        self.alive.load(Ordering::SeqCst) && self.socket.exists()
    }

    /// Forks a child that runs the exec `request` describes.
    pub async fn launch(&self, request: &Request<'_>) -> std::io::Result<WarmChild> {
        let socket = self.socket.clone();
        let line = request.line()?;
        let (child, stream) = tokio::task::spawn_blocking(move || handoff(&socket, &line))
            .await
            .map_err(std::io::Error::other)??;
        let (tx, rx) = oneshot::channel();
        stream.set_nonblocking(true)?;
        let (reader, mut writer) = tokio::net::UnixStream::from_std(stream)?.into_split();
        // Signals for the child's group, for the server to send while the
        // child is unreaped; ends when the exec drops its sender.
        let (signals, mut requests) = mpsc::unbounded_channel::<i32>();
        tokio::spawn(async move {
            while let Some(signal) = requests.recv().await {
                let line = format!("{{\"signal\": {signal}}}\n");
                if writer.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(reader).lines();
            if let Ok(Some(line)) = lines.next_line().await {
                if let Ok(reply) = serde_json::from_str::<Reply>(&line) {
                    let exit = match (reply.exit, reply.signal) {
                        (_, Some(signal)) => Some(Exit::Signal(signal)),
                        (Some(code), None) => Some(Exit::Code(code)),
                        _ => None,
                    };
                    if let Some(exit) = exit {
                        let _ = tx.send(exit);
                    }
                }
            }
        });
        Ok(WarmChild {
            exit: rx,
            group: Group::ForkServer(signals),
            ..child
        })
    }
}

/// Sends the request and the child's pipe ends; returns the child and the
/// connection on which its end will be reported.
fn handoff(socket: &Path, request: &[u8]) -> std::io::Result<(WarmChild, UnixStream)> {
    let (stdin_child, stdin) = pipe()?;
    let (stdout, stdout_child) = pipe()?;
    let (stderr, stderr_child) = pipe()?;
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(STARTUP_BOUND))?;
    let fds = [
        stdin_child.as_raw_fd(),
        stdout_child.as_raw_fd(),
        stderr_child.as_raw_fd(),
    ];
    let control = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(request)],
        &control,
        MsgFlags::empty(),
        None,
    )?;
    drop((stdin_child, stdout_child, stderr_child));
    // Byte by byte: the child's exit line may follow at once and must stay
    // in the socket for the task that waits for it.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match (&stream).read(&mut byte)? {
            0 => return Err(std::io::Error::other("fork server closed the connection")),
            _ if byte[0] == b'\n' => break,
            _ => line.push(byte[0]),
        }
    }
    let line = String::from_utf8_lossy(&line);
    let reply: Reply = serde_json::from_str(&line)
        .map_err(|e| std::io::Error::other(format!("fork server: {e}")))?;
    if let Some(error) = reply.error {
        return Err(std::io::Error::other(format!(
            "fork server refused: {error}"
        )));
    }
    let pid = reply
        .pid
        .ok_or_else(|| std::io::Error::other("fork server sent no pid"))?;
    stream.set_read_timeout(None)?;
    let (_, never) = oneshot::channel();
    let (no_signals, _) = mpsc::unbounded_channel();
    Ok((
        WarmChild {
            pid,
            group: Group::ForkServer(no_signals),
            exit: never,
            stdin,
            stdout,
            stderr,
        },
        stream,
    ))
}

/// A pipe with close-on-exec ends: (read, write).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}
