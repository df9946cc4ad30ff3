//! `vmm.pid` in a sandbox dir: the pid and start time of a VMM whose
//! command line does not name the sandbox dir (a jailed Firecracker), so
//! that crash recovery still finds it.
//!
//! Owns the file's format. A record is trusted only while the process with
//! that pid has the recorded start time: a reused pid is never signalled.

use std::path::Path;

/// The record's file name in a sandbox dir.
pub const FILE: &str = "vmm.pid";

/// Records `pid` (and its start time) in `dir`.
pub fn write(dir: &Path, pid: u32) -> std::io::Result<()> {
    let start = start_time(pid).ok_or_else(|| std::io::Error::other("the VMM is gone"))?;
    std::fs::write(dir.join(FILE), format!("{pid} {start}\n"))
}

/// The recorded VMM of `dir`, if that very process still runs.
pub fn live(dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join(FILE)).ok()?;
    let mut fields = text.split_whitespace();
    let pid: u32 = fields.next()?.parse().ok()?;
    let start: u64 = fields.next()?.parse().ok()?;
    (start_time(pid) == Some(start)).then_some(pid)
}

/// Field 22 of `/proc/<pid>/stat` (clock ticks after boot), for a process
/// that has not exited.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    // `rest` starts at field 3 (state).
    fields.get(22 - 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_names_its_process_only_while_it_runs() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(live(dir.path()), None);
        let mut child = std::process::Command::new("sleep")
            .arg("300")
            .spawn()
            .unwrap();
        write(dir.path(), child.id()).unwrap();
        assert_eq!(live(dir.path()), Some(child.id()));
        // Same pid, another start time: not ours.
        std::fs::write(dir.path().join(FILE), format!("{} 1\n", child.id())).unwrap();
        assert_eq!(live(dir.path()), None);
        write(dir.path(), child.id()).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(live(dir.path()), None);
    }
}
