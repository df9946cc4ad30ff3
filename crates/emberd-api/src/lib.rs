//! Wire types of emberd's public HTTP API.
//!
//! These types are the contract with clients of the original emberd API
//! (see `docs/api.md`): field names and shapes here must not change. Request types
//! reject unknown fields so that typos are reported, not ignored.

use serde::{Deserialize, Serialize};

pub mod files;
pub mod process;
pub mod stream;

pub use files::{FileEntry, FileKind, FileList, WriteResult};
pub use process::{
    AttachControl, AttachNotice, OutputChunk, OutputPage, ProcessInfo, ProcessList, ProcessStarted,
    ProcessState, PtySize, ResizeRequest, SignalRequest, StartProcessRequest,
};
pub use stream::{DroppedEvent, OutputEvent};

/// The language pack used when a create request names none.
pub const DEFAULT_LANGUAGE_PACK: &str = "python";

/// `POST /sandboxes` body. An empty body means all defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateSandboxRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language_pack: Option<String>,
    /// Virtual CPUs; the daemon's default when absent. At most `--max-vcpus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// Guest memory in MiB; the daemon's default when absent. At most `--max-memory-mib`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// Size of the writable layer in MiB; the daemon's default when absent. At most `--max-disk-mib`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u32>,
    /// Seconds from creation after which the sandbox is deleted; none when absent.
    /// At most `--max-ttl-s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
    /// Seconds without an exec after which the sandbox is deleted; 0 disables;
    /// the daemon's default (30 minutes) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<u64>,
}

impl CreateSandboxRequest {
    /// The requested pack, or the default one.
    pub fn pack(&self) -> &str {
        self.language_pack
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or(DEFAULT_LANGUAGE_PACK)
    }
}

/// `POST /sandboxes` 201 body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateSandboxResponse {
    pub id: String,
}

/// `POST /sandboxes/{id}/exec` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Who runs the code: "sandbox" (an unprivileged user, the default) or "root".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// `POST /sandboxes/{id}/exec` 200 body, whatever the exit code.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecResponse {
    pub stdout: String,
    pub stderr: String,
    /// The process's exit status; -1 on a timeout or a signal death.
    pub exit_code: i32,
    /// The whole exec as the daemon saw it.
    pub duration_ms: u64,
    /// The guest agent's own time: from the request reaching it to its answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_us: Option<u64>,
    /// From the request leaving the daemon for the VM to the answer coming
    /// back: the agent's time plus the channel through the VMM and the guest
    /// kernel. `duration_ms` less this is the daemon's own share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_duration_us: Option<u64>,
    /// Why the run ended abnormally, e.g. `"execution timed out"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Set when stdout went over the output cap and was cut.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stdout_truncated: bool,
    /// Set when stderr went over the output cap and was cut.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stderr_truncated: bool,
}

pub(crate) fn is_false(flag: &bool) -> bool {
    !*flag
}

/// Lifecycle state of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    Booting,
    Running,
    Stopping,
    /// The VM ended on its own (guest panic, `reboot`, VMM crash); see `exit_reason`.
    Exited,
}

/// One entry of `GET /sandboxes` and the body of `GET /sandboxes/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SandboxInfo {
    pub id: String,
    pub pack: String,
    pub state: SandboxState,
    pub backend: String,
    /// RFC 3339 UTC time of creation.
    pub created_at: String,
    /// How this sandbox was made: "warm-pool", "snapshot-restore", "standby-restore" or "cold-boot".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_path: Option<String>,
    /// PID of the VMM process on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm_pid: Option<u32>,
    /// Last lines of the guest console log (only in `GET /sandboxes/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_tail: Option<String>,
    /// RFC 3339 UTC time at which the TTL deletes the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// RFC 3339 UTC time at which the sandbox is deleted unless it runs an exec first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_expires_at: Option<String>,
    /// Why the VM ended, when `state` is `exited`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u32>,
}

/// `GET /sandboxes` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SandboxList {
    pub sandboxes: Vec<SandboxInfo>,
}

/// `GET /info` body. The first five fields are those of the original API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InfoResponse {
    pub guest_ram_mib: u32,
    pub guest_vcpus: u32,
    /// "warm-pool", "snapshot-restore", "standby-restore" or "cold-boot": how the next create is served.
    pub boot_path: String,
    /// Sorted pack names.
    pub packs: Vec<String>,
    pub work_dir: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<String>,
    /// What separates guests from the host: "kvm" (hardware virtualisation)
    /// or "tcg-emulation" (QEMU's emulator, not a security boundary; see docs/security.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Sandboxes deleted for their TTL or idle timeout since the daemon started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandboxes_reaped: Option<u64>,
    /// Ready VMs in each pack's warm pool (absent when pools are off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_ready: Option<std::collections::BTreeMap<String, usize>>,
}

/// Every error body: `{"error": "<message>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_create_request_means_python() {
        let req: CreateSandboxRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(req.pack(), "python");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(serde_json::from_str::<ExecRequest>(r#"{"code":"1","cod":"2"}"#).is_err());
    }

    #[test]
    fn exec_response_omits_absent_optionals() {
        let body = serde_json::to_value(ExecResponse {
            stdout: "42\n".into(),
            exit_code: 0,
            duration_ms: 13,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"stdout":"42\n","stderr":"","exit_code":0,"duration_ms":13})
        );
    }
}
