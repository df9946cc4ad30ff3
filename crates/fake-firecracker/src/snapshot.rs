//! The fake's snapshot files, checked on load as Firecracker checks its
//! own: a state file with a format line (magic and version), the state,
//! and a checksum of both; the CPU it was taken on must be this one; the
//! memory file is the guest's memory, as large as the guest's RAM.
//!
//! State file: `FAKE-FIRECRACKER-SNAPSHOT <version>\n<json>\n<crc>\n`, the
//! JSON holding the configuration, the CPU and the memory size.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};

use crate::version;

const MAGIC: &str = "FAKE-FIRECRACKER-SNAPSHOT";

/// The CPU this fake runs on: `FAKE_FC_CPU`, else the host's first
/// processor's model and flags.
pub(crate) fn this_cpu() -> String {
    if let Ok(cpu) = std::env::var("FAKE_FC_CPU") {
        return cpu;
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let first = cpuinfo.split("\n\n").next().unwrap_or_default();
    ["model name", "flags"]
        .iter()
        .map(|name| {
            first
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim() == *name)
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// FNV-1a, 64 bits: enough to notice a changed byte.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Writes the state file and a memory file of `mem_size_mib` MiB (sparse
/// beyond a first page of guest bytes).
pub(crate) fn write(
    state_path: &Path,
    memory_path: &Path,
    config: &serde_json::Map<String, Value>,
    mem_size_mib: u64,
) -> std::io::Result<()> {
    let body = format!(
        "{MAGIC} {}\n{}\n",
        version(),
        json!({ "config": config, "cpu": this_cpu(), "mem_size_mib": mem_size_mib })
    );
    let crc = checksum(body.as_bytes());
    std::fs::write(state_path, format!("{body}{crc:016x}\n"))?;
    let mut memory = std::fs::File::create(memory_path)?;
    memory.write_all(&[0x5a; 4096])?;
    memory.set_len(mem_size_mib << 20)
}

/// Reads and checks a snapshot; returns its configuration. Errors are
/// Firecracker's kind of message, after "Load snapshot error: ".
pub(crate) fn read(
    state_path: &Path,
    memory_path: &Path,
) -> Result<serde_json::Map<String, Value>, String> {
    let bytes = std::fs::read(state_path).map_err(|e| format!("{}: {e}", state_path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.splitn(3, '\n');
    let (format, state, crc) = (
        lines.next().unwrap_or_default(),
        lines.next().unwrap_or_default(),
        lines.next().unwrap_or_default().trim_end(),
    );
    let taken_by = format
        .strip_prefix(MAGIC)
        .map(str::trim)
        .ok_or("Failed to load snapshot state: invalid snapshot format (bad magic)")?;
    if taken_by != version() {
        return Err(format!(
            "Failed to load snapshot state: unsupported snapshot version {taken_by} (this is {})",
            version()
        ));
    }
    let body = format!("{format}\n{state}\n");
    if crc != format!("{:016x}", checksum(body.as_bytes())) {
        return Err("Failed to load snapshot state: snapshot checksum error: the snapshot file is corrupted".into());
    }
    let state: Value =
        serde_json::from_str(state).map_err(|e| format!("Failed to load snapshot state: {e}"))?;
    let cpu = state.get("cpu").and_then(Value::as_str).unwrap_or_default();
    if cpu != this_cpu() {
        return Err(format!(
            "Failed to restore from snapshot: the snapshot was taken on another CPU model or with other CPU flags ({cpu:?}, this host has {:?})",
            this_cpu()
        ));
    }
    let want = state
        .get("mem_size_mib")
        .and_then(Value::as_u64)
        .unwrap_or(0)
        << 20;
    let have = std::fs::metadata(memory_path)
        .map_err(|e| format!("cannot open the memory file {}: {e}", memory_path.display()))?
        .len();
    if have != want {
        return Err(format!(
            "Failed to restore from snapshot: the memory file is {have} bytes, the snapshot's guest memory {want}"
        ));
    }
    Ok(state
        .get("config")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_reads_back_and_every_change_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let (state, memory) = (dir.path().join("s"), dir.path().join("m"));
        let mut config = serde_json::Map::new();
        config.insert("/vsock".into(), json!({"uds_path": "v.sock"}));
        write(&state, &memory, &config, 2).unwrap();
        assert_eq!(std::fs::metadata(&memory).unwrap().len(), 2 << 20);
        assert_eq!(read(&state, &memory).unwrap(), config);

        let good = std::fs::read_to_string(&state).unwrap();
        std::fs::write(&state, good.replace("v.sock", "w.sock")).unwrap();
        assert!(read(&state, &memory).unwrap_err().contains("checksum"));
        std::fs::write(&state, good.replace(&version(), "1.7.0")).unwrap();
        assert!(read(&state, &memory).unwrap_err().contains("version"));
        std::fs::write(&state, "garbage").unwrap();
        assert!(read(&state, &memory).unwrap_err().contains("format"));
        std::fs::write(&state, &good).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&memory)
            .unwrap()
            .set_len(4096)
            .unwrap();
        assert!(read(&state, &memory).unwrap_err().contains("memory file"));
    }
}
