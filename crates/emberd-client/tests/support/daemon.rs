//! The real daemon for the client tests: `emberd::api::app()` and its
//! Manager over the fake VM backend (no VM, no QEMU), served on a real TCP
//! listener on 127.0.0.1, with fake guest images in a temp dir. Exec code is
//! the fake guest's script (`emberd::vmm::fake::script`).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use emberd::sandbox::{Manager, ManagerConfig};
use emberd::vmm::fake::FakeBackend;

/// A running daemon; the server task ends when this is dropped.
pub struct Daemon {
    pub addr: SocketAddr,
    /// Steers and watches the daemon's VMs.
    pub backend: FakeBackend,
    manager: Arc<Manager>,
    server: tokio::task::JoinHandle<()>,
    _root: tempfile::TempDir,
}

impl Daemon {
    pub async fn start() -> Self {
        Self::start_with(&emberd::api::HttpConfig::default()).await
    }

    /// A daemon whose HTTP edge is set up as `http` says (tokens, origins).
    pub async fn start_with(http: &emberd::api::HttpConfig) -> Self {
        let root = tempfile::Builder::new()
            .prefix("emberd-client")
            .tempdir()
            .unwrap();
        let config = ManagerConfig {
            work_dir: root.path().join("work"),
            vcpus: 1,
            memory_mib: 256,
            boot_timeout: Duration::from_secs(5),
            overlay_mib: 64,
            pool_size: 0,
            pool_memory_mib: 0,
            pool: emberd::sandbox::PoolPolicy::default(),
            standby_vmms: 0,
            snapshot_dir: None,
            warm_templates_at_start: false,
            limits: emberd::sandbox::Limits::default(),
        };
        let backend = FakeBackend::new();
        let manifest = emberd::image::fake_manifest(&root.path().join("data"), "echo:warm");
        let manager = Arc::new(Manager::new(Arc::new(backend.clone()), manifest, config).unwrap());
        manager.start_background();
        let app = emberd::api::app_with(manager.clone(), http);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Daemon {
            addr,
            backend,
            manager,
            server,
            _root: root,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Shuts the daemon down and checks that every VM it started was stopped.
    pub async fn stop(self) {
        self.manager.shutdown().await;
        let live = self.backend.live();
        assert!(live.is_empty(), "VMs were never stopped: {live:?}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.server.abort();
    }
}
