//! `emberd serve`: start-up checks, the backend choice, the HTTP server and
//! graceful shutdown.
//!
//! Order: resolve settings → load and verify the images → pick the backend
//! (and say why) → take the work dir (clearing a crashed daemon's leftovers)
//! → bind → serve until SIGINT/SIGTERM → drain HTTP within a bound → stop
//! every VM → exit 0.

use std::future::IntoFuture;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::backend_choice::{choose_backend, Backend, Reason};
use crate::config::{ConfigError, ServeArgs, Settings};
use crate::image::{Manifest, ManifestError};
use crate::sandbox::{Manager, WorkDirError};
use crate::vmm::cgroup::VmmCgroups;
use crate::vmm::firecracker::{FirecrackerBackend, FirecrackerSetupError};
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
    #[error("the HTTP server failed")]
    Server(#[source] std::io::Error),
}

/// Runs the daemon until a termination signal; returns once every VM is stopped.
pub async fn run(args: ServeArgs) -> Result<(), ServeError> {
    let settings = args.resolve()?;
    tracing::debug!(?settings, "settings resolved");
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
    let server = axum::serve(listener, crate::api::app(manager.clone()))
        .with_graceful_shutdown(stop.clone().cancelled_owned());
    let mut server = std::pin::pin!(server.into_future());
    tokio::select! {
        result = &mut server => result.map_err(ServeError::Server)?,
        () = termination_signal() => {
            tracing::info!(bound = ?settings.shutdown_timeout, "shutting down: draining requests");
            stop.cancel();
            if tokio::time::timeout(settings.shutdown_timeout, &mut server).await.is_err() {
                tracing::warn!("requests still running after the drain bound; stopping anyway");
            }
        }
    }
    manager.shutdown().await;
    tracing::info!("emberd stopped");
    Ok(())
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
                .with_cgroups(vmm_cgroups());
            let accel = backend.accel_decision();
            tracing::info!(backend = %decision.backend, why = %decision.reason, version = %backend.version(), accel = %accel.accel, accel_reason = %accel.reason, vmm_user = backend.vmm_user().map_or("the daemon's own", |u| u.name.as_str()), "backend chosen");
            Ok(Arc::new(backend))
        }
        Backend::Firecracker => {
            let backend = firecracker?;
            if let Some(obstacle) = &decision.obstacle {
                tracing::warn!(%obstacle, "VMs will fail to start");
            }
            tracing::info!(backend = %decision.backend, why = %decision.reason, version = %backend.version(), "backend chosen");
            Ok(Arc::new(backend))
        }
    }
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
