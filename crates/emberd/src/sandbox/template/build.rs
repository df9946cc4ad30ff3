//! Building a pack's template: cold-boot a VM, warm it up, quiesce it,
//! close the agent session, pause and snapshot it, publish the files.
//! Where the backend keeps guest RAM in a file, the VM is booted with its
//! RAM in the staging directory, so the template is that file (which
//! clones map copy-on-write) plus the device state; the VM is stopped
//! before the files are hashed, so nothing writes the RAM after its
//! checksum.
//!
//! The agent connection is closed before the pause, so the image holds an
//! agent waiting for its next connection, which is what a restored clone
//! gets. Every call to the guest is bounded ([`crate::guest::bounds`]): a
//! guest that stops answering fails the build, never hangs it. Builds of
//! all daemons sharing the data dir take turns under its build lock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::guest::AgentClient;
use crate::image::PackArtefact;
use crate::vmm::{SnapshotFiles, Vm};

use super::super::error::{BootError, SandboxError};
use super::super::launcher::Launcher;
use super::super::record::Guest;
use super::super::warmup::warm_up;
use super::lock::BuildLock;
use super::store::{Staging, Templates};

/// Time for the agent to see the host hang up before the VM is paused.
const QUIESCE_SETTLE: Duration = Duration::from_millis(300);

/// Builds the template of `pack` unless one exists or a build is under way
/// (or failed before), and logs the result.
pub(in crate::sandbox) async fn build_logged(
    launcher: &Launcher,
    pack: &str,
    shutting_down: &CancellationToken,
) {
    let Some(templates) = &launcher.templates else {
        return;
    };
    if launcher.template_for(pack).is_some() || !templates.claim_build(pack) {
        return;
    }
    let started = Instant::now();
    let result = tokio::select! {
        result = build(launcher, templates, pack) => result,
        () = shutting_down.cancelled() => Err(SandboxError::ShuttingDown),
    };
    templates.finish_build(pack, result.is_ok());
    if !matches!(result, Err(SandboxError::ShuttingDown)) {
        launcher.metrics.record_template_build(pack, result.is_ok());
    }
    match result {
        Ok(files) => tracing::info!(
            pack,
            template = %files.dir.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "template snapshot ready"
        ),
        Err(e) => tracing::warn!(
            pack,
            error = %crate::error_chain::render(&e),
            "template snapshot failed; creates cold-boot"
        ),
    }
}

async fn build(
    launcher: &Launcher,
    templates: &Arc<Templates>,
    pack: &str,
) -> Result<SnapshotFiles, SandboxError> {
    let artefact = launcher.pack(pack)?;
    let key = launcher
        .template_key(pack)
        .ok_or_else(|| SandboxError::UnknownPack(pack.into()))?;
    let _turn = BuildLock::acquire(templates.root())
        .await
        .map_err(|source| BootError::TemplateStore {
            path: templates.root().to_owned(),
            source,
        })?;
    // Another daemon may have built it while this one waited.
    if let Some(files) = templates.get(pack, key) {
        return Ok(files);
    }
    let (id, dir) = launcher.new_sandbox_dir()?;
    // Removes the directory however the build ends, a shutdown dropping
    // this future included; the VM dies with its handle.
    let _dir = RemoveOnDrop(dir.clone());
    // Removed on drop, a failure or a shutdown included, unless published.
    let staging = templates
        .staging_dir(pack, key)
        .map_err(|source| BootError::TemplateStore {
            path: templates.root().to_owned(),
            source,
        })?;
    let mut spec = launcher.boot_spec(&id, &dir, artefact);
    if launcher.backend.capabilities().memory_file {
        spec.memory_file = Some(
            SnapshotFiles {
                dir: staging.dir.clone(),
            }
            .memory_file(),
        );
    }
    async {
        let guest = launcher.cold_boot(&spec).await?;
        let prepared = warm_up_and_quiesce(&guest.agent, artefact).await;
        let Guest { vm, agent, .. } = guest;
        // Close the session before the pause, so the image holds an agent
        // waiting for its next connection.
        drop(agent);
        let result = match prepared {
            Ok(()) => {
                tokio::time::sleep(QUIESCE_SETTLE).await;
                snapshot_into(vm.as_ref(), templates, pack, key, staging).await
            }
            Err(e) => Err(e),
        };
        vm.stop().await.ok();
        result
    }
    .await
}

/// A build's sandbox directory, removed when the build ends.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn warm_up_and_quiesce(
    agent: &AgentClient,
    artefact: &PackArtefact,
) -> Result<(), SandboxError> {
    warm_up(agent, artefact).await?;
    agent.quiesce().await.map_err(SandboxError::Exec)
}

async fn snapshot_into(
    vm: &dyn Vm,
    templates: &Arc<Templates>,
    pack: &str,
    key: &str,
    staging: Staging,
) -> Result<SnapshotFiles, SandboxError> {
    let store_error = |path: &std::path::Path| {
        let path = path.to_owned();
        move |source| BootError::TemplateStore { path, source }
    };
    vm.pause().await.map_err(BootError::from)?;
    vm.snapshot(&SnapshotFiles {
        dir: staging.dir.clone(),
    })
    .await
    .map_err(BootError::from)?;
    // A VM whose RAM is the template's file must be gone before the file
    // is hashed: nothing may write it after its checksum.
    vm.stop().await.map_err(BootError::from)?;
    // Publishing hashes the files: keep it off the async workers.
    let staging_dir = staging.dir.clone();
    let (store, pack, key) = (templates.clone(), pack.to_owned(), key.to_owned());
    let published = tokio::task::spawn_blocking(move || store.publish(&pack, &key, &staging))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    Ok(published.map_err(store_error(&staging_dir))?)
}
