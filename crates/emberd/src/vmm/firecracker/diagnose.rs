//! Why a Firecracker failed, in its own words and naming the file they
//! came from. Once `PUT /logger` ran, Firecracker writes its errors to its
//! log file (`fc.log`), not to the guest console; before that, and when it
//! panics, to stderr (`vmm.log`). A failed `/snapshot/load` ends the
//! process, so its 400 may never arrive: the log file is where the cause is.
//! Reads only the ends of those files and of the console ring.

use std::path::Path;

use super::launch::read_tail;
use crate::vmm::console::ConsoleRing;

/// Firecracker's log file, in the sandbox dir or the jail's root.
pub const FC_LOG: &str = "fc.log";
/// Most of the console read for a message.
const CONSOLE_TAIL: usize = 4096;

/// The best last word on a Firecracker's failure, with where it came from:
/// the last error of its log file in `dir`, else the last line of its
/// stderr `stderr_log`, else the last line of the guest console.
pub fn last_words(dir: &Path, stderr_log: &Path, console: &ConsoleRing) -> String {
    let fc_log = dir.join(FC_LOG);
    let log = read_tail(&fc_log);
    let error = log
        .lines()
        .rev()
        .find(|l| l.contains("ERROR") || l.contains(":error]") || l.contains("Error"))
        .map(str::trim);
    if let Some(line) = error {
        return format!("{line} (from Firecracker's log {})", fc_log.display());
    }
    let last = |text: &str| {
        text.lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_owned)
    };
    if let Some(line) = last(&read_tail(stderr_log)) {
        return format!(
            "{line} (from Firecracker's stderr {})",
            stderr_log.display()
        );
    }
    if let Some(line) = last(&String::from_utf8_lossy(&console.tail(CONSOLE_TAIL))) {
        return format!("{line} (from the guest console)");
    }
    "no message in Firecracker's log, its stderr or the guest console".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_files_error_comes_first_and_says_where_it_is_from() {
        let dir = tempfile::tempdir().unwrap();
        let stderr = dir.path().join("vmm.log");
        let console = ConsoleRing::default();
        console.push(b"[    1.0] guest says hello\n");
        assert!(last_words(dir.path(), &stderr, &console).ends_with("(from the guest console)"));
        std::fs::write(&stderr, "thread 'main' panicked\n").unwrap();
        let words = last_words(dir.path(), &stderr, &console);
        assert!(
            words.starts_with("thread 'main' panicked (from Firecracker's stderr"),
            "{words}"
        );
        std::fs::write(
            dir.path().join(FC_LOG),
            "[fc:fc_api:ERROR] Received Error. Status code: 400. Message: Load snapshot error: checksum\n[fc:main:WARN] shutting down\n",
        )
        .unwrap();
        let words = last_words(dir.path(), &stderr, &console);
        assert!(words.contains("Load snapshot error: checksum"), "{words}");
        assert!(words.contains("(from Firecracker's log"), "{words}");
    }
}
