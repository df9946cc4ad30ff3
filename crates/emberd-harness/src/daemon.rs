//! One `emberd serve` process: started on a free port, waited for, stopped
//! on drop together with any VM it leaves behind.

use std::ffi::{OsStr, OsString};
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::procs::{self, Process};

/// How often start-up and exits are polled.
const POLL: Duration = Duration::from_millis(20);
/// How long a dropped handle waits for the VMs it killed to be gone.
const VM_KILL_BOUND: Duration = Duration::from_secs(5);
/// Start attempts when another process takes the free port first.
const PORT_ATTEMPTS: usize = 3;
/// What the daemon logs when it cannot bind its address.
const BIND_FAILURE: &str = "cannot listen on";

/// Why a daemon could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("cannot prepare the daemon's work dir or log")]
    Files(#[source] std::io::Error),
    #[error("cannot find a free port")]
    Port(#[source] std::io::Error),
    #[error("cannot start {binary}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("emberd exited ({status}) before serving; its log:\n{log}")]
    Exited { status: ExitStatus, log: String },
    #[error("emberd did not serve within {bound:?}; its log:\n{log}")]
    NotServing { bound: Duration, log: String },
    #[error("cannot send {signal} to emberd")]
    Signal {
        signal: Signal,
        #[source]
        source: nix::Error,
    },
    #[error("emberd did not exit within {bound:?} of {signal}")]
    StillRunning { signal: Signal, bound: Duration },
    #[error("emberd has already exited")]
    AlreadyExited,
    #[error("cannot wait for emberd")]
    Wait(#[source] std::io::Error),
}

/// How to start a daemon: `emberd serve --addr <free port> [--backend …]
/// --work-dir … [--data-dir …] <args>`, with `EMBERD_LOG=info` unless the
/// environment given here says otherwise.
#[derive(Debug, Clone)]
pub struct DaemonBuilder {
    binary: PathBuf,
    backend: Option<String>,
    data_dir: Option<PathBuf>,
    work_dir: Option<PathBuf>,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    ready_bound: Duration,
    stop_grace: Duration,
    bind_ip: IpAddr,
    token: Option<String>,
}

impl DaemonBuilder {
    /// A daemon run from `binary` (an `emberd` executable).
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        DaemonBuilder {
            binary: binary.into(),
            backend: None,
            data_dir: None,
            work_dir: None,
            args: Vec::new(),
            env: vec![("EMBERD_LOG".into(), Some("info".into()))],
            ready_bound: Duration::from_secs(60),
            stop_grace: Duration::from_secs(10),
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            token: None,
        }
    }

    /// Listens on `ip` (default 127.0.0.1); the harness still connects
    /// over loopback when `ip` is unspecified (0.0.0.0 or ::).
    pub fn bind_ip(mut self, ip: IpAddr) -> Self {
        self.bind_ip = ip;
        self
    }

    /// Gives the daemon `token` (as `EMBERD_TOKEN`); [`Daemon::client`] sends it.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        self.env
            .push(("EMBERD_TOKEN".into(), Some(OsString::from(&token))));
        self.token = Some(token);
        self
    }

    /// `--backend <name>` (default: the daemon's own choice).
    pub fn backend(mut self, name: impl Into<String>) -> Self {
        self.backend = Some(name.into());
        self
    }

    /// `--data-dir <dir>` (default: the daemon's own).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Runs on `dir`, which may hold a previous daemon's leftovers (default:
    /// a fresh directory removed on drop). The log goes next to it.
    pub fn work_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.work_dir = Some(dir.into());
        self
    }

    /// One more argument after the harness's own.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// More arguments after the harness's own.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable of the daemon.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// Removes an inherited environment variable from the daemon's.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }

    /// How long the daemon may take to answer `GET /healthz` (default 60 s).
    pub fn ready_within(mut self, bound: Duration) -> Self {
        self.ready_bound = bound;
        self
    }

    /// How long the daemon gets after SIGTERM on drop before SIGKILL
    /// (default 10 s; zero: SIGKILL at once).
    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    /// Starts the daemon and waits until it serves.
    pub fn start(self) -> Result<Daemon, HarnessError> {
        let (root, work_dir) = match &self.work_dir {
            Some(dir) => (None, dir.clone()),
            None => {
                // Short: sandbox dirs hold Unix sockets, whose paths are capped.
                let root = tempfile::Builder::new()
                    .prefix("emb")
                    .tempdir_in("/tmp")
                    .map_err(HarnessError::Files)?;
                let dir = root.path().join("w");
                (Some(root), dir)
            }
        };
        let log_dir = work_dir
            .parent()
            .map_or_else(|| work_dir.clone(), Path::to_owned);
        let mut attempt = 1;
        loop {
            let addr = free_port(self.bind_ip)?;
            let log = log_dir.join(format!("daemon-{}.log", addr.port()));
            let child = self.spawn(addr, &work_dir, &log)?;
            let mut daemon = Daemon {
                pid: child.id(),
                child: Some(child),
                addr: connect_addr(addr),
                token: self.token.clone(),
                work_dir: work_dir.clone(),
                log,
                stop_grace: self.stop_grace,
                _root: None,
            };
            match daemon.wait_serving(self.ready_bound) {
                Ok(()) => {
                    daemon._root = root;
                    return Ok(daemon);
                }
                Err(HarnessError::Exited { log, .. })
                    if log.contains(BIND_FAILURE) && attempt < PORT_ATTEMPTS =>
                {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn spawn(&self, addr: SocketAddr, work_dir: &Path, log: &Path) -> Result<Child, HarnessError> {
        let log = std::fs::File::create(log).map_err(HarnessError::Files)?;
        let mut command = Command::new(&self.binary);
        command
            .arg("serve")
            .arg("--addr")
            .arg(addr.to_string())
            .arg("--work-dir")
            .arg(work_dir);
        if let Some(backend) = &self.backend {
            command.arg("--backend").arg(backend);
        }
        if let Some(data_dir) = &self.data_dir {
            command.arg("--data-dir").arg(data_dir);
        }
        command.args(&self.args);
        for (key, value) in &self.env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().map_err(HarnessError::Files)?))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                binary: self.binary.clone(),
                source,
            })
    }
}

/// A running `emberd serve`. Dropping it sends SIGTERM (the daemon stops
/// its VMs), then SIGKILL after the grace, then SIGKILL to any process still
/// naming the work dir.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    pid: u32,
    addr: SocketAddr,
    work_dir: PathBuf,
    log: PathBuf,
    stop_grace: Duration,
    token: Option<String>,
    _root: Option<tempfile::TempDir>,
}

impl Daemon {
    /// A builder for a daemon run from `binary`.
    pub fn builder(binary: impl Into<PathBuf>) -> DaemonBuilder {
        DaemonBuilder::new(binary)
    }

    /// Where to reach the daemon (loopback when it listens on every address).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The token the daemon was given, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// `http://<addr>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// A client of this daemon's API.
    pub fn client(&self) -> Result<emberd_client::Client, emberd_client::ClientError> {
        let client = emberd_client::Client::new(&self.addr.to_string())?;
        Ok(match &self.token {
            Some(token) => client.with_token(token),
            None => client,
        })
    }

    /// The daemon's process id (also after it exited).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// The file the daemon's stdout and stderr go to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: Signal) -> Result<(), HarnessError> {
        if self.child.is_none() {
            return Err(HarnessError::AlreadyExited);
        }
        kill(Pid::from_raw(self.pid as i32), signal)
            .map_err(|source| HarnessError::Signal { signal, source })
    }

    /// Sends `signal` and waits up to `bound` for the daemon to exit.
    pub fn signal_and_wait(
        &mut self,
        signal: Signal,
        bound: Duration,
    ) -> Result<ExitStatus, HarnessError> {
        self.signal(signal)?;
        let child = self.child.as_mut().ok_or(HarnessError::AlreadyExited)?;
        let status =
            wait_bounded(child, bound)?.ok_or(HarnessError::StillRunning { signal, bound })?;
        self.child = None;
        Ok(status)
    }

    /// The daemon's child processes (its VMMs), reaped or not.
    pub fn children(&self) -> Vec<u32> {
        procs::processes()
            .into_iter()
            .filter(|p| p.ppid == self.pid)
            .map(|p| p.pid)
            .collect()
    }

    /// Live processes naming the work dir on their command line (every VMM
    /// and guest does), other than emberd daemons themselves.
    pub fn vm_processes(&self) -> Vec<u32> {
        let needle = self.work_dir.display().to_string();
        let own = std::process::id();
        procs::processes()
            .into_iter()
            .filter(|p| p.pid != own && p.pid != self.pid && !p.is_zombie())
            .filter(|p| !is_daemon(p) && p.command_line().contains(&needle))
            .map(|p| p.pid)
            .collect()
    }

    /// Names of the sandbox directories (`sb_…`) in the work dir.
    pub fn sandbox_dirs(&self) -> Vec<String> {
        std::fs::read_dir(&self.work_dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("sb_"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Polls `GET /healthz` until it answers 200, the process exits, or `bound` passes.
    fn wait_serving(&mut self, bound: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + bound;
        let child = self.child.as_mut().expect("a freshly started daemon");
        loop {
            if let Some(status) = child.try_wait().map_err(HarnessError::Wait)? {
                self.child = None;
                return Err(HarnessError::Exited {
                    status,
                    log: self.log_text(),
                });
            }
            if healthy(self.addr) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::NotServing {
                    bound,
                    log: self.log_text(),
                });
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(self.pid as i32);
            let graceful = !self.stop_grace.is_zero()
                && kill(pid, Signal::SIGTERM).is_ok()
                && matches!(wait_bounded(&mut child, self.stop_grace), Ok(Some(_)));
            if !graceful {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let vms = self.vm_processes();
        for &pid in &vms {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        // A SIGKILL lands asynchronously: wait (bounded) until the VMs are
        // gone, so that nothing of this daemon outlives its handle.
        let deadline = std::time::Instant::now() + VM_KILL_BOUND;
        while vms.iter().any(|&pid| crate::is_alive(pid)) && std::time::Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
    }
}

/// A port nobody listens on now. Another process may take it before the
/// daemon binds it; [`DaemonBuilder::start`] then tries another.
fn free_port(ip: IpAddr) -> Result<SocketAddr, HarnessError> {
    let listener = std::net::TcpListener::bind((ip, 0)).map_err(HarnessError::Port)?;
    listener.local_addr().map_err(HarnessError::Port)
}

/// `addr`, or loopback on its port when `addr` is unspecified.
fn connect_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// `GET /healthz` answers 200.
fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut status_line = [0u8; 12];
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_exact(&mut status_line).is_ok()
        && &status_line == b"HTTP/1.1 200"
}

/// An `emberd serve` process (this harness's or another's).
fn is_daemon(process: &Process) -> bool {
    process.argv.get(1).is_some_and(|arg| arg == "serve")
}

/// Waits up to `bound` for `child` to exit; `None` if it still runs.
fn wait_bounded(child: &mut Child, bound: Duration) -> Result<Option<ExitStatus>, HarnessError> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().map_err(HarnessError::Wait)? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
}
