//! Copy-on-write clones: the QEMU process started for a restore (its RAM
//! the template's file mapped private, `-incoming defer`), the state load
//! that makes it run, and the RAM file's checks. Owns no policy on when a
//! process is started ahead; that is the caller's.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

use super::command::{GuestMemory, Incoming};
use super::{QemuBackend, QemuVm, MIGRATION_FD_NAME, MIGRATION_FILE};
use crate::vmm::{BootSpec, SnapshotFiles, StandbyVm, Vm, VmmError};

impl QemuBackend {
    /// Starts QEMU with `snapshot`'s RAM file mapped private and
    /// `-incoming defer`, waiting for its device state.
    pub(super) async fn standby(
        &self,
        spec: &BootSpec,
        snapshot: &SnapshotFiles,
    ) -> Result<QemuStandby, VmmError> {
        let ram = snapshot.memory_file();
        check_memory_file(&ram, spec.memory_mib)?;
        let memory = GuestMemory::Private {
            path: &ram,
            read_only: self.private_read_only,
        };
        let vm = self.launch(spec, Incoming::Defer, memory).await?;
        Ok(QemuStandby {
            vm,
            sandbox_id: spec.sandbox_id.clone(),
            bound: spec.boot_timeout,
        })
    }
}

/// A QEMU process waiting for the device state of a copy-on-write clone.
pub(super) struct QemuStandby {
    vm: QemuVm,
    sandbox_id: String,
    /// Bound on the state load, to running.
    bound: Duration,
}

#[async_trait]
impl StandbyVm for QemuStandby {
    fn pid(&self) -> Option<u32> {
        self.vm.pid()
    }

    fn has_exited(&self) -> bool {
        self.vm.has_exited()
    }

    async fn restore(self: Box<Self>, snapshot: &SnapshotFiles) -> Result<Box<dyn Vm>, VmmError> {
        let started = std::time::Instant::now();
        let result = async {
            let file = File::options()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(snapshot.dir.join(MIGRATION_FILE))?;
            self.vm.load_state(&file).await?;
            drop(file);
            self.vm.finish_incoming(self.bound).await
        }
        .await;
        if let Err(e) = result {
            self.vm.stop().await.ok();
            return Err(e);
        }
        tracing::debug!(
            sandbox = %self.sandbox_id,
            load_to_running_ms = started.elapsed().as_secs_f64() * 1000.0,
            "device state loaded; the clone runs"
        );
        Ok(Box::new(self.vm))
    }

    async fn stop(&self) {
        self.vm.stop().await.ok();
    }
}

/// Makes the RAM file of a template's VM: a new regular file of the
/// guest's size, sparse, readable by the daemon's user alone.
pub(super) fn create_memory_file(path: &Path, memory_mib: u32) -> Result<(), VmmError> {
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    file.set_len(u64::from(memory_mib) << 20)?;
    Ok(())
}

/// Checks that a snapshot's RAM file is a regular file of the guest's size
/// (a clone of another size would misread it).
pub(super) fn check_memory_file(path: &Path, memory_mib: u32) -> Result<(), VmmError> {
    let meta = std::fs::symlink_metadata(path)?;
    let expected = u64::from(memory_mib) << 20;
    if !meta.is_file() || meta.len() != expected {
        return Err(VmmError::Config(format!(
            "{} is not a guest RAM file of {memory_mib} MiB",
            path.display()
        )));
    }
    Ok(())
}

/// Whether QEMU's `--version` line names a release at least `min`.
pub(super) fn version_at_least(line: &str, min: (u32, u32)) -> bool {
    let Some(rest) = line.split("version ").nth(1) else {
        return false;
    };
    let mut parts = rest
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= min,
        _ => false,
    }
}

/// The migration capability that leaves RAM in a shared file out of the stream.
pub(super) fn ignore_shared() -> serde_json::Value {
    json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] })
}

impl QemuVm {
    /// Loads device state from `file` into a QEMU started with
    /// `-incoming defer` whose RAM is the snapshot's file.
    async fn load_state(&self, file: &File) -> Result<(), VmmError> {
        self.qmp("migrate-set-capabilities", Some(ignore_shared()))
            .await?;
        self.pass_fd(file).await?;
        let uri = format!("fd:{MIGRATION_FD_NAME}");
        self.qmp("migrate-incoming", Some(json!({ "uri": uri })))
            .await
            .map(drop)
    }
}
