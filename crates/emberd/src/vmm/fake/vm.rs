//! One fake VM as the daemon holds it, and the handle a test holds to
//! watch it and to hurt it; its shared state lives in [`super::guest`].
//!
//! A session is the scripted agent served on one end of an in-memory duplex
//! stream; the other end is what [`Vm::connect_agent`] returns. When the VM
//! dies or stops, its sessions are aborted, so the daemon's end breaks as it
//! would when a VMM process goes away.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use emberd_proto::v1::agent_server::AgentServer;

use super::agent::ScriptedAgent;
use super::guest::{Guest, Life};
use super::{AgentCall, SNAPSHOT_FILE, SNAPSHOT_HEADER};
use crate::vmm::{AgentStream, SnapshotFiles, Vm, VmExit, VmmError};

/// Bytes in flight in each direction of an agent stream.
const STREAM_BUFFER: usize = 1024 * 1024;
/// The real agent's gRPC message cap.
const MESSAGE_LIMIT: usize = emberd_proto::boundary::MAX_MESSAGE_BYTES;
const SIGKILL: i32 = 9;

/// The [`Vm`] the backend hands out.
pub(super) struct FakeVm {
    pub(super) guest: Arc<Guest>,
}

#[async_trait]
impl Vm for FakeVm {
    fn pid(&self) -> Option<u32> {
        Some(self.guest.pid)
    }

    fn has_exited(&self) -> bool {
        self.guest.life() != Life::Running
    }

    async fn connect_agent(&self) -> Result<AgentStream, VmmError> {
        if self.guest.life() != Life::Running {
            return Err(VmmError::ExitedEarly(format!(
                "fake VM {} is gone",
                self.guest.pid
            )));
        }
        // A new host connection ends a quiesce, as in the real agent.
        self.guest.quiesced.store(false, Ordering::SeqCst);
        let (host, guest) = tokio::io::duplex(STREAM_BUFFER);
        let routes = tonic::service::Routes::new(
            AgentServer::new(ScriptedAgent::new(self.guest.clone()))
                .max_decoding_message_size(MESSAGE_LIMIT)
                .max_encoding_message_size(MESSAGE_LIMIT),
        );
        let session = tokio::spawn(async move {
            let _ = emberd_proto::serve_over(guest, routes).await;
        });
        self.guest.sessions.lock().push(session.abort_handle());
        // It may have died while the session started.
        if self.guest.life() != Life::Running {
            session.abort();
        }
        Ok(Box::new(host))
    }

    async fn pause(&self) -> Result<(), VmmError> {
        self.running_or_gone("pause")?;
        self.guest.paused.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn resume(&self) -> Result<(), VmmError> {
        self.running_or_gone("resume")?;
        self.guest.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    async fn snapshot(&self, dest: &SnapshotFiles) -> Result<(), VmmError> {
        self.running_or_gone("snapshot")?;
        if !self.guest.paused.load(Ordering::SeqCst) {
            return Err(VmmError::Api {
                request: "snapshot".into(),
                message: "the VM is running; pause it first".into(),
            });
        }
        std::fs::write(
            dest.dir.join(SNAPSHOT_FILE),
            format!("{SNAPSHOT_HEADER}{}\n", self.guest.pid),
        )?;
        self.guest.backend.snapshots.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn stop(&self) -> Result<(), VmmError> {
        self.guest.end(Life::Stopped);
        Ok(())
    }

    async fn wait(&self) -> Result<VmExit, VmmError> {
        let mut life = self.guest.life.subscribe();
        let ended = *life
            .wait_for(|life| *life != Life::Running)
            .await
            .map_err(|_| VmmError::Control(std::io::Error::other("fake VM state gone")))?;
        Ok(exit_of(ended))
    }

    fn console_tail(&self, max_bytes: usize) -> Vec<u8> {
        self.guest.console.tail(max_bytes)
    }
}

impl FakeVm {
    fn running_or_gone(&self, operation: &str) -> Result<(), VmmError> {
        match self.guest.life() {
            Life::Running => Ok(()),
            _ => Err(VmmError::Api {
                request: operation.to_owned(),
                message: format!("fake VM {} is gone", self.guest.pid),
            }),
        }
    }
}

impl Drop for FakeVm {
    fn drop(&mut self) {
        self.guest.end(Life::Dropped);
    }
}

fn exit_of(life: Life) -> VmExit {
    match life {
        Life::Died => VmExit {
            code: None,
            signal: Some(SIGKILL),
        },
        _ => VmExit {
            code: Some(0),
            signal: None,
        },
    }
}

/// A test's view of one fake VM.
#[derive(Clone)]
pub struct FakeVmHandle {
    pub(super) guest: Arc<Guest>,
}

impl std::fmt::Debug for FakeVmHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeVmHandle")
            .field("pid", &self.guest.pid)
            .field("sandbox_id", &self.guest.sandbox_id)
            .field("life", &self.guest.life())
            .finish()
    }
}

impl FakeVmHandle {
    /// The fake PID reported by [`Vm::pid`].
    pub fn pid(&self) -> u32 {
        self.guest.pid
    }

    /// The sandbox id of the boot spec the VM was made from.
    pub fn boot_id(&self) -> &str {
        &self.guest.sandbox_id
    }

    /// The boot spec it was made from (sizes, kernel arguments).
    pub fn spec(&self) -> &crate::vmm::BootSpec {
        &self.guest.spec
    }

    /// The root disk (the language pack) it was booted with.
    pub fn root_disk(&self) -> &Path {
        &self.guest.root_disk
    }

    /// True when the VM was restored from a snapshot.
    pub fn restored(&self) -> bool {
        self.guest.restored
    }

    /// Not yet stopped or dropped (a VM that died still counts).
    pub fn is_live(&self) -> bool {
        self.guest.is_live()
    }

    /// True once the VM stopped running, whatever the reason.
    pub fn has_ended(&self) -> bool {
        self.guest.life() != Life::Running
    }

    /// The guest writes `text` to its console.
    pub fn write_console(&self, text: &str) {
        self.guest.console.push(text.as_bytes());
    }

    /// The VM dies: its agent streams break and [`Vm::wait`] returns.
    pub fn kill(&self) {
        self.guest.end(Life::Died);
    }

    /// From now on the agent takes `Health` calls and never answers them.
    pub fn hang_health(&self) {
        self.guest.health_hangs.store(true, Ordering::SeqCst);
    }

    /// `Health` calls the agent has received.
    pub fn health_calls(&self) -> u64 {
        self.guest.health_calls.load(Ordering::SeqCst)
    }

    /// The agent calls this VM received, in order.
    pub fn agent_calls(&self) -> Vec<AgentCall> {
        self.guest.calls.lock().clone()
    }

    /// The sandbox id of the last `SetIdentity`, if one came.
    pub fn identity(&self) -> Option<String> {
        self.guest.identity.lock().clone()
    }

    /// Execs running in this VM.
    pub fn running_execs(&self) -> usize {
        self.guest.running_execs.load(Ordering::SeqCst)
    }
}
