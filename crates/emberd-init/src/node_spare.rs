//! The pre-started Node.js interpreter (`node_spare.js`).
//!
//! Node cannot `fork()` a running interpreter, so the agent keeps one spare
//! `node` process started ahead of time instead: its own process group, its
//! stdio pipes already made, the common built-in modules loaded, blocked on a
//! control socket (its descriptor 3). An exec that asks for the warm Node
//! takes the spare, writes it the code file, working directory and
//! environment, and from then on the spare is that exec's process, reaped
//! like any other. Each spare serves one exec; the next is started when that
//! exec ends, so it never competes with the exec for the vCPU.
//!
//! In the guest the spare runs as the sandbox user from the start (an exec
//! as root runs one-shot) and joins the exec's cgroup when it is taken,
//! before it runs any of the exec's code.
//!
//! `Quiesce` stops the spare, so that no snapshot holds one: a spare restored
//! into many clones would give them all the same `Math.random` seed. The
//! `SetIdentity` that follows a restore starts the clone's own.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::cgroup::ExecCgroup;
use crate::group::Group;
use crate::process_env::default_env;
use crate::reaper::{Exit, Reaper};
use crate::user::User;
use crate::warm::{interpreter_and_script, prepare_interpreter, Request, WarmChild};

const SCRIPT: &str = include_str!("node_spare.js");
/// The descriptor on which the spare talks to the agent.
const CONTROL_FD: i32 = 3;

/// Keeps at most one spare `node` ready.
pub struct NodeSpares {
    node: PathBuf,
    script: PathBuf,
    reaper: Reaper,
    /// The user spares run as (the guest); `None`: as the agent.
    user: Option<User>,
    slot: Mutex<Option<Spare>>,
}

impl std::fmt::Debug for NodeSpares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSpares")
            .field("node", &self.node)
            .field("has_spare", &self.has_spare())
            .finish_non_exhaustive()
    }
}

struct Spare {
    pid: i32,
    exit: oneshot::Receiver<Exit>,
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
    control: tokio::net::unix::OwnedWriteHalf,
    ready: Arc<AtomicBool>,
}

impl NodeSpares {
    /// Writes the spare's script into `dir` (which the spare's user must be
    /// able to read) and starts the first spare; with `switch_users` (the
    /// guest) spares run as the sandbox user. Returns `None` when there is
    /// no node.
    pub fn start(reaper: &Reaper, dir: &Path, switch_users: bool) -> Option<Arc<NodeSpares>> {
        let (node, script) = interpreter_and_script("node", dir, "emberd-node-spare.js", SCRIPT)?;
        let spares = Arc::new(NodeSpares {
            node,
            script,
            reaper: reaper.clone(),
            user: switch_users.then_some(User::Sandbox),
            slot: Mutex::new(None),
        });
        spares.replenish();
        Some(spares)
    }

    /// The slot, emptied first if its spare has died (killed, out of
    /// memory): a dead spare is neither ready nor worth handing an exec.
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Spare>> {
        let mut slot = self
            .slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.as_mut().is_some_and(|spare| {
            !matches!(
                spare.exit.try_recv(),
                Err(oneshot::error::TryRecvError::Empty)
            )
        }) {
            *slot = None;
        }
        slot
    }

    /// True when a spare has started and waits for an exec.
    pub fn ready(&self) -> bool {
        self.slot()
            .as_ref()
            .is_some_and(|spare| spare.ready.load(Ordering::SeqCst))
    }

    /// True when there is a live spare, ready or still starting.
    pub fn has_spare(&self) -> bool {
        self.slot().is_some()
    }

    /// Starts a spare unless a live one is there.
    pub fn replenish(&self) {
        let mut slot = self.slot();
        if slot.is_some() {
            return;
        }
        match self.spawn() {
            Ok(spare) => *slot = Some(spare),
            Err(e) => eprintln!("emberd-init: cannot start a Node spare: {e}"),
        }
    }

    /// Kills the spare, if any, without starting another.
    pub fn stop(&self) {
        if let Some(spare) = self.slot().take() {
            self.reaper.signal_group(spare.pid, Signal::SIGKILL);
        }
    }

    /// Hands the exec to the spare; the spare becomes the exec's process,
    /// in `cgroup` when there is one. Fails when there is no live spare;
    /// the caller then runs one-shot.
    pub async fn launch(
        &self,
        path: &Path,
        cwd: &Path,
        env: &HashMap<String, String>,
        cgroup: Option<&ExecCgroup>,
    ) -> std::io::Result<WarmChild> {
        let mut spare = self
            .slot()
            .take()
            .ok_or_else(|| std::io::Error::other("no spare node"))?;
        let kill = |spare: &Spare| self.reaper.signal_group(spare.pid, Signal::SIGKILL);
        if let Some(cgroup) = cgroup {
            // Before the spare runs anything of the exec's.
            if let Err(e) = cgroup.add(spare.pid) {
                kill(&spare);
                return Err(std::io::Error::other(format!(
                    "cannot move the spare into the exec's cgroup: {e}"
                )));
            }
        }
        let request = Request {
            path,
            cwd,
            env,
            ids: None,
            cgroup_procs: None,
            max_processes: None,
        }
        .line()?;
        // A spare still starting is taken too: it is further along than a
        // fresh process would be.
        let handed = async {
            spare.control.write_all(&request).await?;
            spare.control.shutdown().await
        }
        .await;
        if let Err(e) = handed {
            kill(&spare);
            return Err(std::io::Error::other(format!(
                "the spare node is gone: {e}"
            )));
        }
        Ok(WarmChild {
            pid: spare.pid,
            group: Group::Agent {
                reaper: self.reaper.clone(),
                pid: spare.pid,
            },
            exit: spare.exit,
            stdin: spare.stdin,
            stdout: spare.stdout,
            stderr: spare.stderr,
        })
    }

    fn spawn(&self) -> std::io::Result<Spare> {
        let (agent_end, spare_end) = UnixStream::pair()?;
        let mut command = Command::new(&self.node);
        command
            .arg(&self.script)
            .env_clear()
            .envs(default_env())
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spare_fd = spare_end.as_raw_fd();
        let (user, parent) = (self.user, std::process::id() as libc::pid_t);
        // SAFETY: dup2(2), fcntl(2) and `prepare_interpreter` are
        // async-signal-safe; `spare_fd` stays open in the parent until spawn
        // returns. As a host process the agent can be killed; its spare must
        // not outlive it.
        unsafe {
            command.pre_exec(move || {
                // dup2 onto itself would keep close-on-exec set.
                let moved = if spare_fd == CONTROL_FD {
                    libc::fcntl(spare_fd, libc::F_SETFD, 0)
                } else {
                    libc::dup2(spare_fd, CONTROL_FD)
                };
                if moved < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                prepare_interpreter(user, parent)
            });
        }
        let (mut child, exit) = self.reaper.spawn_group(&mut command)?;
        drop(spare_end);
        let pid = child.id() as i32;
        let pipes = (
            child.stdin.take().map(OwnedFd::from),
            child.stdout.take().map(OwnedFd::from),
            child.stderr.take().map(OwnedFd::from),
        );
        let (Some(stdin), Some(stdout), Some(stderr)) = pipes else {
            self.reaper.signal_group(pid, Signal::SIGKILL);
            return Err(std::io::Error::other("the spare's pipes are missing"));
        };
        agent_end.set_nonblocking(true)?;
        let (mut ready_line, control) = tokio::net::UnixStream::from_std(agent_end)?.into_split();
        let ready = Arc::new(AtomicBool::new(false));
        let flag = ready.clone();
        tokio::spawn(async move {
            let mut line = [0u8; 6];
            if ready_line.read_exact(&mut line).await.is_ok() && &line == b"ready\n" {
                flag.store(true, Ordering::SeqCst);
            }
        });
        Ok(Spare {
            pid,
            exit,
            stdin,
            stdout,
            stderr,
            control,
            ready,
        })
    }
}
