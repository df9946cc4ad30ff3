//! emberd-init: PID 1 and agent of an emberd guest.
//!
//! As PID 1 it boots the guest ([`pid1`]), then serves the agent on vsock
//! and on the virtio-serial port, never returning. Run as an ordinary
//! process (`--unix-socket PATH --root DIR`) it serves the same agent on a
//! Unix socket with guest paths resolved under DIR: that is how the tests
//! and the fake Firecracker use it.

mod agent;
mod cgroup;
mod code_file;
mod exec;
mod files;
mod forkserver;
mod group;
mod identity;
mod loopback;
mod node_spare;
mod output;
mod pid1;
mod process_env;
mod pty;
mod reaper;
mod transport;
mod user;
mod warm;
mod warm_pick;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use emberd_proto::kernel_args::KernelArg;

use crate::agent::{AgentService, Mode};
use crate::exec::ExecEnv;
use crate::files::FilesService;
use crate::reaper::Reaper;

#[derive(Parser)]
#[command(
    name = "emberd-init",
    version,
    about = "Guest PID 1 and agent of emberd"
)]
struct Args {
    /// Serve on this Unix socket instead of booting a guest.
    #[arg(long, requires = "root")]
    unix_socket: Option<PathBuf>,
    /// Directory standing in for the guest's `/` (with --unix-socket).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Directory for code files (with --unix-socket) [default: the system temp dir].
    #[arg(long)]
    tmp_dir: Option<PathBuf>,
}

fn main() {
    if std::process::id() == 1 {
        boot_guest();
    }
    let args = Args::parse();
    let (Some(socket), Some(root)) = (args.unix_socket, args.root) else {
        eprintln!(
            "emberd-init: not PID 1; run with --unix-socket PATH --root DIR to serve on a host"
        );
        std::process::exit(2);
    };
    let root = match std::fs::canonicalize(&root) {
        Ok(root) => root,
        Err(e) => {
            eprintln!("emberd-init: root {}: {e}", root.display());
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async move {
        let reaper = Reaper::start()?;
        let code_dir = args.tmp_dir.unwrap_or_else(std::env::temp_dir);
        let python = forkserver::ForkServer::start(&reaper, &code_dir, false);
        let node = node_spare::NodeSpares::start(&reaper, &code_dir, false);
        let exec_env = ExecEnv {
            default_cwd: root.clone(),
            code_dir,
            root: Some(root.clone()),
            python,
            node,
            switch_users: false,
            cgroups: None,
        };
        let agent = Arc::new(AgentService::new(Mode::Host, reaper, exec_env));
        let routes = transport::routes(&agent, &FilesService::new(root, false));
        transport::serve_unix(&socket, agent, routes).await
    });
    if let Err(e) = result {
        eprintln!("emberd-init: {e}");
        std::process::exit(1);
    }
}

fn boot_guest() -> ! {
    let started = Instant::now();
    if let Err(e) = pid1::mount_early() {
        pid1::fatal(&error_chain(&e));
    }
    let modules = pid1::load_modules();
    if let Err(e) = pid1::switch_to_pack_root() {
        pid1::fatal(&error_chain(&e));
    }
    std::env::set_var("PATH", process_env::PATH);
    std::env::set_var("HOME", "/root");
    std::env::set_var("LANG", "C.UTF-8");
    if let Err(e) = user::provision() {
        eprintln!("emberd-init: cannot set up the sandbox user: {e}");
    }
    // The kernel spares PID 1 already; this also covers the agent's own
    // threads' allocations. Every child resets it (see `user`).
    if let Err(e) = user::protect_from_oom() {
        eprintln!("emberd-init: cannot protect the agent from the OOM killer: {e}");
    }
    let hostname = pid1::kernel_args().into_iter().find_map(|arg| match arg {
        KernelArg::Hostname(name) => Some(name),
        _ => None,
    });
    if let Err(e) = identity::set_hostname(&hostname.unwrap_or_else(|| "emberd".into())) {
        eprintln!("emberd-init: {}", error_chain(&e));
    }
    if let Err(e) = loopback::bring_up() {
        eprintln!("emberd-init: cannot bring up the loopback interface: {e}");
    }
    eprintln!(
        "emberd-init: booted in {} ms ({modules} modules)",
        started.elapsed().as_millis()
    );
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => pid1::fatal(&format!("cannot start the runtime: {e}")),
    };
    let error = runtime.block_on(serve_guest());
    pid1::fatal(&error)
}

/// The guest's directory for the agent's private files (root only).
const PRIVATE_DIR: &str = "/run/emberd";
/// The guest's directory for code files (root writes, everyone reads).
const CODE_DIR: &str = "/run/emberd-code";

/// Serves until every transport has failed; returns why.
async fn serve_guest() -> String {
    let reaper = match Reaper::start() {
        Ok(reaper) => reaper,
        Err(e) => return format!("cannot start the reaper: {e}"),
    };
    let cgroups = match cgroup::Cgroups::setup() {
        Ok(cgroups) => Some(Arc::new(cgroups)),
        Err(e) => {
            eprintln!(
                "emberd-init: no per-exec cgroups ({}); execs are bounded by their process groups only",
                error_chain(&e)
            );
            None
        }
    };
    // The fork server's socket and script: root's alone. Code files (each
    // readable by its exec's user) and the spare node's script: in a
    // directory only root writes, outside the space guest code can fill.
    let private = Path::new(PRIVATE_DIR);
    let code_dir = Path::new(CODE_DIR);
    for (dir, mode) in [(private, 0o700), (code_dir, 0o711)] {
        let made = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)));
        if let Err(e) = made {
            return format!("cannot create {}: {e}", dir.display());
        }
    }
    // The fork server warms up while the agent already serves: execs run
    // one-shot until it is ready, and `Health` says when it is.
    let python = forkserver::ForkServer::start(&reaper, private, true);
    if let Some(python) = python.clone() {
        tokio::spawn(async move {
            if !python.wait_ready().await {
                eprintln!(
                    "emberd-init: the Python fork server did not come up; execs run one-shot"
                );
            }
        });
    }
    let node = node_spare::NodeSpares::start(&reaper, code_dir, true);
    let exec_env = ExecEnv {
        default_cwd: PathBuf::from("/"),
        code_dir: code_dir.to_owned(),
        root: None,
        python,
        node,
        switch_users: true,
        cgroups,
    };
    let agent = Arc::new(AgentService::new(Mode::Guest, reaper, exec_env));
    let routes = transport::routes(&agent, &FilesService::new(PathBuf::from("/"), true));
    let mut tasks = tokio::task::JoinSet::new();
    {
        let (agent, routes) = (agent.clone(), routes.clone());
        tasks.spawn(async move {
            transport::serve_vsock(agent, routes)
                .await
                .map_err(|e| format!("vsock: {e}"))
        });
    }
    // The port's device node appears once virtio_console has probed it.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut port = transport::find_serial_port();
    while port.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
        port = transport::find_serial_port();
    }
    if let Some(device) = port {
        tasks.spawn(async move {
            transport::serve_serial(device, agent, routes)
                .await
                .map_err(|e| format!("virtio-serial: {e}"))
        });
    }
    eprintln!("emberd-init: ready");
    let mut errors = Vec::new();
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(Err(e)) => {
                eprintln!("emberd-init: {e}");
                errors.push(e);
            }
            Ok(Ok(())) => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    format!("no transport left to serve on ({})", errors.join("; "))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
