//! Domain types of the manager as wire types of `emberd-api`, and back.
//! The original API's conventions live here: -1 for an exec that timed out,
//! died of a signal or never started, with the reason in `error`.

use emberd_api::{
    CreateSandboxRequest, ExecRequest, ExecResponse, FileEntry, FileKind, InfoResponse,
    SandboxInfo, SandboxState,
};

use crate::guest::files::{EntryKind, FileStat};
use crate::sandbox::{
    self, CreateParams, DaemonInfo, ExecOutcome, ExecParams, ExitStatus, GuestUser, SandboxError,
    SandboxSummary,
};
use crate::vmm::Accel;

pub fn create_params(request: CreateSandboxRequest) -> CreateParams {
    CreateParams {
        pack: request.pack().to_owned(),
        vcpus: request.vcpus,
        memory_mib: request.memory_mib,
        disk_mib: request.disk_mib,
        ttl_s: request.ttl_s,
        idle_timeout_s: request.idle_timeout_s,
    }
}

pub fn exec_params(request: ExecRequest) -> Result<ExecParams, SandboxError> {
    let user = match request.user.as_deref() {
        None => GuestUser::default(),
        Some(name) => GuestUser::from_name(name).ok_or_else(|| {
            SandboxError::Invalid(format!(
                "user must be \"sandbox\" or \"root\", not {:?}",
                truncate_chars(name, 64)
            ))
        })?,
    };
    Ok(ExecParams {
        code: request.code,
        stdin: request.stdin,
        timeout_ms: request.timeout_ms,
        user,
    })
}

fn truncate_chars(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

fn rfc3339(time: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

pub fn exec_response(outcome: ExecOutcome) -> ExecResponse {
    let (exit_code, error) = match outcome.status {
        ExitStatus::Exited(code) => (code, None),
        ExitStatus::TimedOut => (-1, Some("execution timed out".to_owned())),
        ExitStatus::NotStarted(reason) => (-1, Some(reason)),
        ExitStatus::Signalled(signal) => (-1, Some(format!("killed by signal {signal}"))),
    };
    ExecResponse {
        stdout: String::from_utf8_lossy(&outcome.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&outcome.stderr).into_owned(),
        exit_code,
        duration_ms: saturating_u64(outcome.elapsed.as_millis()),
        duration_us: Some(saturating_u64(outcome.agent_time.as_micros())),
        vm_duration_us: outcome.vm_time.map(|d| saturating_u64(d.as_micros())),
        error,
        stdout_truncated: outcome.stdout_truncated,
        stderr_truncated: outcome.stderr_truncated,
    }
}

/// One entry of a files listing: octal mode, RFC 3339 UTC time.
pub fn file_entry(stat: FileStat) -> FileEntry {
    FileEntry {
        path: stat.path,
        name: stat.name,
        kind: match stat.kind {
            EntryKind::File => FileKind::File,
            EntryKind::Dir => FileKind::Dir,
            EntryKind::Symlink => FileKind::Symlink,
            EntryKind::Other => FileKind::Other,
        },
        size: stat.size,
        mode: format!("{:04o}", stat.mode),
        mtime: rfc3339(stat.modified),
        link_target: stat.link_target,
    }
}

pub fn sandbox_info(summary: SandboxSummary) -> SandboxInfo {
    SandboxInfo {
        id: summary.id,
        pack: summary.pack,
        state: match summary.state {
            sandbox::SandboxState::Booting => SandboxState::Booting,
            sandbox::SandboxState::Running => SandboxState::Running,
            sandbox::SandboxState::Stopping => SandboxState::Stopping,
            sandbox::SandboxState::Exited => SandboxState::Exited,
        },
        backend: summary.backend.to_owned(),
        created_at: rfc3339(summary.created_at),
        boot_path: summary.boot_path.map(|p| p.as_str().to_owned()),
        vmm_pid: summary.vmm_pid,
        console_tail: summary.console_tail,
        expires_at: summary.expires_at.map(rfc3339),
        idle_expires_at: summary.idle_expires_at.map(rfc3339),
        exit_reason: summary.exit_reason,
        vcpus: summary.shape.map(|s| s.vcpus),
        memory_mib: summary.shape.map(|s| s.memory_mib),
        disk_mib: summary.shape.map(|s| s.disk_mib),
    }
}

pub fn info_response(info: DaemonInfo) -> InfoResponse {
    InfoResponse {
        guest_ram_mib: info.guest_memory_mib,
        guest_vcpus: info.guest_vcpus,
        boot_path: info.next_boot_path.as_str().to_owned(),
        packs: info.packs,
        work_dir: info.work_dir.display().to_string(),
        backend: Some(info.backend.to_owned()),
        accel: info.accel.map(|accel| accel.to_string()),
        isolation: info.accel.map(|accel| isolation(accel).to_owned()),
        version: Some(env!("CARGO_PKG_VERSION").to_owned()),
        pool_ready: info.pool_ready,
        sandboxes_reaped: Some(info.reaped),
    }
}

/// What separates guests from the host under `accel`.
pub fn isolation(accel: Accel) -> &'static str {
    match accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg-emulation",
    }
}

fn saturating_u64(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn outcome(status: ExitStatus) -> ExecOutcome {
        ExecOutcome {
            stdout: b"partial \xff".to_vec(),
            stderr: Vec::new(),
            status,
            stdout_truncated: true,
            stderr_truncated: false,
            elapsed: Duration::from_millis(5),
            agent_time: Duration::from_micros(1200),
            vm_time: None,
        }
    }

    #[test]
    fn timeouts_signals_and_failed_starts_map_to_minus_one() {
        let timed_out = exec_response(outcome(ExitStatus::TimedOut));
        assert_eq!(timed_out.exit_code, -1);
        assert_eq!(timed_out.error.as_deref(), Some("execution timed out"));
        assert_eq!(timed_out.stdout, "partial \u{fffd}");
        assert!(timed_out.stdout_truncated);
        assert_eq!(timed_out.duration_ms, 5);
        assert_eq!(timed_out.duration_us, Some(1200));

        let killed = exec_response(outcome(ExitStatus::Signalled(15)));
        assert_eq!(killed.exit_code, -1);
        assert_eq!(killed.error.as_deref(), Some("killed by signal 15"));

        let not_started = exec_response(outcome(ExitStatus::NotStarted("no such file".into())));
        assert_eq!(not_started.exit_code, -1);
        assert_eq!(not_started.error.as_deref(), Some("no such file"));

        let normal = exec_response(outcome(ExitStatus::Exited(7)));
        assert_eq!(normal.exit_code, 7);
        assert_eq!(normal.error, None);
    }

    #[test]
    fn file_entries_carry_octal_modes_and_utc_times() {
        let entry = file_entry(FileStat {
            path: "/a/b".into(),
            name: "b".into(),
            kind: EntryKind::Symlink,
            size: 1,
            mode: 0o777,
            modified: std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(86_400),
            link_target: Some("c".into()),
        });
        assert_eq!(entry.mode, "0777");
        assert_eq!(entry.mtime, "1970-01-02T00:00:00Z");
        assert_eq!(entry.kind, FileKind::Symlink);
        assert_eq!(entry.link_target.as_deref(), Some("c"));
    }
}
