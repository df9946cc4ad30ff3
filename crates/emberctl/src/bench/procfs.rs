//! What `emberctl bench` reads of the host's processes and memory:
//! `smaps_rollup` PSS, `status` RSS, open descriptors, `MemAvailable`, and
//! directories under a path. A file that cannot be read or parsed is an
//! error, never a zero: a figure made of zeros would flatter.

use std::path::Path;

use anyhow::Context as _;

/// The `Pss:` line of an `smaps_rollup`, in KiB.
pub(super) fn parse_pss_kib(rollup: &str) -> Option<u64> {
    field_kib(rollup, "Pss:")
}

/// The value of a `Name:   123 kB` line.
fn field_kib(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// PSS of the file at `path` (an `smaps_rollup`), in KiB.
pub(super) fn pss_kib_at(path: &Path) -> anyhow::Result<u64> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_pss_kib(&text).with_context(|| format!("no Pss line in {}", path.display()))
}

/// PSS of process `pid`, in KiB.
pub(super) fn pss_kib(pid: u32) -> anyhow::Result<u64> {
    pss_kib_at(Path::new(&format!("/proc/{pid}/smaps_rollup")))
}

/// RSS of process `pid`, in KiB.
pub(super) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    field_kib(&text, "VmRSS:").with_context(|| format!("no VmRSS line in {path}"))
}

/// Open descriptors of process `pid`.
pub(super) fn fd_count(pid: u32) -> anyhow::Result<usize> {
    let path = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&path)
        .with_context(|| format!("cannot list {path}"))?
        .count())
}

/// The host's `MemAvailable`, in KiB.
pub(super) fn mem_available_kib() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").context("cannot read /proc/meminfo")?;
    field_kib(&text, "MemAvailable:").context("no MemAvailable line in /proc/meminfo")
}

/// Directories under `root` (not counting it), however deep; a directory
/// that vanishes while being walked (a sandbox being deleted) is skipped.
pub(super) fn dir_count(root: &Path) -> anyhow::Result<usize> {
    let mut count = 0;
    let mut stack = vec![root.to_path_buf()];
    let mut first = true;
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if !first && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
        };
        first = false;
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                count += 1;
                stack.push(entry.path());
            }
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLLUP: &str = "55d0c0000000-7ffd8b1fe000 ---p 00000000 00:00 0  [rollup]\n\
Rss:              183204 kB\nPss:              162123 kB\nPss_Anon:         150000 kB\n";

    #[test]
    fn pss_is_read_from_its_own_line_not_from_pss_anon() {
        assert_eq!(parse_pss_kib(ROLLUP), Some(162_123));
        assert_eq!(parse_pss_kib("Rss: 1 kB\n"), None);
        assert_eq!(parse_pss_kib("Pss: lots kB\n"), None);
    }

    #[test]
    fn an_unreadable_or_empty_rollup_is_an_error_not_zero() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("smaps_rollup");
        assert!(pss_kib_at(&missing).is_err());
        // A directory cannot be read as a file (root reads any mode bits).
        assert!(pss_kib_at(dir.path()).is_err());
        std::fs::write(&missing, "").unwrap();
        assert!(pss_kib_at(&missing).is_err());
        std::fs::write(&missing, ROLLUP).unwrap();
        assert_eq!(pss_kib_at(&missing).unwrap(), 162_123);
        // A process that does not exist has no PSS.
        assert!(pss_kib(u32::MAX).is_err());
    }

    #[test]
    fn this_process_has_memory_descriptors_and_the_host_memory() {
        let me = std::process::id();
        assert!(pss_kib(me).unwrap() > 0);
        assert!(rss_kib(me).unwrap() > 0);
        assert!(fd_count(me).unwrap() >= 3);
        assert!(mem_available_kib().unwrap() > 0);
    }

    #[test]
    fn directories_are_counted_at_every_depth() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b/c")).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("a/file"), "x").unwrap();
        assert_eq!(dir_count(dir.path()).unwrap(), 4);
        assert!(dir_count(&dir.path().join("nope")).is_err());
    }
}
