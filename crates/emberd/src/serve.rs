//! `emberd serve`: start-up checks, the backend choice, the HTTP server and
//! graceful shutdown.
//!
//! Order: resolve settings → load the tokens (refusing a non-loopback
//! address without one) → load and verify the images → pick the backend
//! (and say why) → take the work dir (clearing a crashed daemon's leftovers)
//! → bind → serve until SIGINT/SIGTERM → drain HTTP within a bound → stop
//! every VM → exit 0.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::auth::{TokenError, Tokens};
use crate::api::origin::OriginPolicy;
use crate::api::HttpConfig;
use crate::backend_choice::{choose_backend, choose_jailer, Backend, Reason, Unjailed};
use crate::config::{ConfigError, ServeArgs, Settings};
use crate::image::{Manifest, ManifestError};
use crate::sandbox::{Manager, WorkDirError};
use crate::vmm::cgroup::VmmCgroups;
use crate::vmm::firecracker::{
    cgroup_v2_usable, FirecrackerBackend, FirecrackerSetupError, JailerConfig,
};
use crate::vmm::kvm::hardware_kvm;
use crate::vmm::qemu::{QemuBackend, QemuSetupError};
use crate::vmm::vmm_user::{VmmUser, VmmUserError};
use crate::vmm::VmBackend;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tokens(#[from] TokenError),
    #[error(
        "refusing to serve on {addr} without authentication: set --token-file or EMBERD_TOKEN, \
         or listen on a loopback address (127.0.0.1, ::1)"
    )]
    NoToken { addr: SocketAddr },
    #[error(transparent)]
    Images(#[from] ManifestError),
    #[error(transparent)]
    Qemu(#[from] QemuSetupError),
    #[error(transparent)]
    Firecracker(#[from] FirecrackerSetupError),
    #[error(transparent)]
    WorkDir(#[from] WorkDirError),
    #[error(transparent)]
    VmmUser(#[from] VmmUserError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the daemon until a termination signal; returns once every VM is stopped.
pub async fn run(args: ServeArgs) -> Result<(), ServeError> {
    let settings = args.resolve()?;
    tracing::debug!(?settings, "settings resolved");
    let http = http_config(&settings, std::env::var("EMBERD_TOKEN").ok().as_deref())?;
    let manifest = Manifest::load(&settings.data_dir)?;
    manifest.verify()?;
    let backend = make_backend(&settings)?;
    let manager = Arc::new(Manager::new(backend, manifest, settings.manager_config())?);
    manager.start_background();
    let listener = TcpListener::bind(settings.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: settings.addr,
            source,
        })?;
    tracing::info!(
        addr = %settings.addr,
        work_dir = %settings.work_dir.display(),
        data_dir = %settings.data_dir.display(),
        "emberd is serving"
    );

    let stop = CancellationToken::new();
    let app = crate::api::app_with(manager.clone(), &http);
    let server = crate::api::serve(listener, app, settings.header_read_timeout, stop.clone());
    let mut server = std::pin::pin!(server);
    tokio::select! {
        () = &mut server => {}
        () = termination_signal() => {
            tracing::info!(bound = ?settings.shutdown_timeout, "shutting down: draining requests");
            stop.cancel();
            manager.close_streams();
            if tokio::time::timeout(settings.shutdown_timeout, &mut server).await.is_err() {
                tracing::warn!("requests still running after the drain bound; stopping anyway");
            }
        }
    }
    manager.shutdown().await;
    tracing::info!("emberd stopped");
    Ok(())
}

/// The HTTP edge's settings; no token is a start-up error on any address
/// but loopback. `env_token` is `EMBERD_TOKEN`.
fn http_config(settings: &Settings, env_token: Option<&str>) -> Result<HttpConfig, ServeError> {
    let tokens = Tokens::load(settings.token_file.as_deref(), env_token)?;
    let loopback = settings.addr.ip().is_loopback();
    if tokens.is_empty() && !loopback {
        return Err(ServeError::NoToken {
            addr: settings.addr,
        });
    }
    tracing::info!(
        authentication = if tokens.is_empty() { "off" } else { "bearer token" },
        allowed_origins = ?settings.allow_origin,
        max_concurrent_requests = settings.max_concurrent_requests,
        "HTTP edge"
    );
    Ok(HttpConfig {
        tokens,
        origins: OriginPolicy::new(&settings.allow_origin, loopback),
        max_concurrent_requests: settings.max_concurrent_requests,
        body_read_timeout: settings.body_read_timeout,
    })
}

/// Makes the backend [`choose_backend`] picks, and logs the choice and why.
fn make_backend(settings: &Settings) -> Result<Arc<dyn VmBackend>, ServeError> {
    let kvm = hardware_kvm();
    let firecracker = FirecrackerBackend::new(settings.firecracker_bin.clone());
    let decision = choose_backend(settings.backend, firecracker.is_ok(), &kvm);
    match decision.backend {
        Backend::Qemu => {
            if let (Reason::NoFirecracker, Err(e)) = (&decision.reason, &firecracker) {
                tracing::info!(error = %e, "Firecracker is not usable");
            }
            let vmm_user = VmmUser::for_daemon(nix::unistd::geteuid(), &settings.vmm_user)?;
            let backend = QemuBackend::new(settings.qemu_bin.clone(), settings.accel)?
                .with_vmm_user(vmm_user)
                .with_cgroups(vmm_cgroups())
                .with_tb_size_mib(settings.tb_size_mib);
            let accel = backend.accel_decision();
            tracing::info!(backend = %decision.backend, why = %decision.reason, version = %backend.version(), accel = %accel.accel, accel_reason = %accel.reason, vmm_user = backend.vmm_user().map_or("the daemon's own", |u| u.name.as_str()), "backend chosen");
            Ok(Arc::new(backend))
        }
        Backend::Firecracker => {
            let backend = jail_firecracker(firecracker?, settings)?;
            if let Some(obstacle) = &decision.obstacle {
                tracing::warn!(%obstacle, "VMs will fail to start");
            }
            tracing::info!(backend = %decision.backend, why = %decision.reason, version = %backend.version(), "backend chosen");
            Ok(Arc::new(backend))
        }
    }
}

/// Puts Firecracker behind its jailer when [`choose_jailer`] says so, and
/// says why when it does not.
fn jail_firecracker(
    backend: FirecrackerBackend,
    settings: &Settings,
) -> Result<FirecrackerBackend, FirecrackerSetupError> {
    let named = settings.jailer.as_deref();
    let found = crate::host_tools::find_in_path(named.unwrap_or(std::path::Path::new("jailer")));
    if let (Some(named), None, false) = (named, &found, settings.no_jailer) {
        return Err(FirecrackerSetupError::JailerNotFound(named.to_owned()));
    }
    let root = nix::unistd::geteuid().is_root();
    let binary = match (
        choose_jailer(settings.no_jailer, found.is_some(), root),
        found,
    ) {
        (Ok(()), Some(binary)) => binary,
        (why, _) => {
            let why = why.err().unwrap_or(Unjailed::NoJailer);
            if why == Unjailed::NotRoot {
                tracing::warn!(%why, "Firecracker runs without its jailer");
            } else {
                tracing::info!(%why, "Firecracker runs without its jailer");
            }
            return Ok(backend);
        }
    };
    // The same unprivileged user QEMU drops to (`--vmm-user`).
    let user = VmmUser::lookup(&settings.vmm_user)
        .ok()
        .flatten()
        .ok_or_else(|| FirecrackerSetupError::NoVmmUser(settings.vmm_user.clone()))?;
    let config = JailerConfig {
        binary,
        uid: user.uid,
        gid: user.gid,
        chroot_base: (settings.jailer_chroot_base.clone())
            .unwrap_or_else(|| settings.data_dir.join("jail")),
        cgroups: cgroup_v2_usable(),
    };
    let backend = backend.with_jailer(config)?;
    if let Some(config) = backend.jailer() {
        tracing::info!(
            jailer = %config.binary.display(),
            user = %user.name,
            uid = config.uid,
            gid = config.gid,
            chroot_base = %config.chroot_base.display(),
            cgroups = config.cgroups,
            "Firecracker runs in its jailer"
        );
    }
    Ok(backend)
}

/// The cgroup layout for VMMs, or none (with the reason) where the host
/// does not delegate the controllers.
fn vmm_cgroups() -> Option<Arc<VmmCgroups>> {
    match VmmCgroups::setup() {
        Ok(cgroups) => {
            tracing::info!(parent = %cgroups.parent().display(), "VMMs get cgroup v2 cpu, memory and pids limits");
            Some(Arc::new(cgroups))
        }
        Err(e) => {
            tracing::info!(reason = %crate::error_chain::render(&e), "VMMs run without cgroup limits");
            None
        }
    }
}

async fn termination_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_serves_without_a_token() {
        let on = |addr: &str| Settings {
            addr: addr.parse().unwrap(),
            ..Settings::default()
        };
        for addr in ["0.0.0.0:7777", "192.0.2.1:7777", "[::]:7777"] {
            let err = http_config(&on(addr), None).unwrap_err();
            assert!(matches!(err, ServeError::NoToken { .. }), "{addr}: {err}");
            assert!(err.to_string().contains("EMBERD_TOKEN"), "{err}");
            let config = http_config(&on(addr), Some("a-token-of-sixteen-chars")).unwrap();
            assert!(!config.tokens.is_empty());
        }
        for addr in ["127.0.0.1:7777", "127.3.2.1:1", "[::1]:7777"] {
            let config = http_config(&on(addr), None).unwrap();
            assert!(config.tokens.is_empty(), "{addr}");
        }
    }
}
