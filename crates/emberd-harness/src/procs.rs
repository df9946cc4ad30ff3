//! The host's processes as `/proc` shows them: how the harness finds a
//! daemon's VMs. Reads only; never signals anything.

/// One process, as read from `/proc/<pid>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    /// The state letter of `/proc/<pid>/stat` (`R`, `S`, `Z`…).
    pub state: char,
    pub argv: Vec<String>,
}

impl Process {
    /// Reads `/proc/<pid>`; `None` when the process is gone.
    pub fn read(pid: u32) -> Option<Process> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name in parentheses may hold spaces: parse after it.
        let (_, rest) = stat.rsplit_once(") ")?;
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let ppid = fields.next()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let argv = cmdline
            .split(|b| *b == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        Some(Process {
            pid,
            ppid,
            state,
            argv,
        })
    }

    /// Exited but not yet reaped by its parent.
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }

    /// The command line, arguments joined by spaces.
    pub fn command_line(&self) -> String {
        self.argv.join(" ")
    }
}

/// Every process on the host, this one included.
pub fn processes() -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(Process::read)
        .collect()
}

/// Live (not zombie) processes other than this one whose command line
/// contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let own = std::process::id();
    processes()
        .into_iter()
        .filter(|p| p.pid != own && !p.is_zombie() && p.command_line().contains(needle))
        .map(|p| p.pid)
        .collect()
}

/// The process exists and has not exited.
pub fn is_alive(pid: u32) -> bool {
    Process::read(pid).is_some_and(|p| !p.is_zombie())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_read_with_its_parent_and_arguments() {
        let me = Process::read(std::process::id()).expect("/proc/self");
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
        assert!(!me.is_zombie());
        assert_eq!(
            me.argv[0],
            std::env::args().next().unwrap(),
            "{:?}",
            me.argv
        );
        assert!(is_alive(me.pid));
    }

    #[test]
    fn a_child_is_found_by_its_arguments_until_it_is_reaped() {
        let marker = format!("{}.271828", std::process::id());
        let mut child = std::process::Command::new("sleep")
            .arg(&marker)
            .spawn()
            .expect("sleep");
        let pid = child.id();
        // Between fork and exec the child still has this test's command line.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while processes_mentioning(&marker).is_empty() {
            assert!(std::time::Instant::now() < deadline, "sleep never started");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(processes_mentioning(&marker), [pid]);
        let found = Process::read(pid).unwrap();
        assert_eq!(found.ppid, std::process::id());
        assert_eq!(found.argv, ["sleep", marker.as_str()]);

        child.kill().unwrap();
        // Killed but not reaped: a zombie, which counts as neither alive nor mentioned.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !Process::read(pid).is_some_and(|p| p.is_zombie()) {
            assert!(std::time::Instant::now() < deadline, "SIGKILL did not land");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(!is_alive(pid));
        assert!(processes_mentioning(&marker).is_empty());
        child.wait().unwrap();
        assert_eq!(Process::read(pid), None);
    }
}
