//! Firecracker's jailer: its command line and the chroot it builds.
//!
//! Owns [`JailerConfig`] (which jailer, which uid/gid, where jails go), the
//! per-VM [`Jail`] (`<base>/<exec name>/<id>/root`: the files the VM needs
//! hard-linked in, the sockets Firecracker binds there) and the jailer's
//! command line. Must never leave a jail behind once its VM is gone, and
//! never hand a jailed VMM a file it could write that another VM reads.

use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::process::Command;

/// Where Unix socket paths must fit (`sun_path`, with its NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Host memory a jailed Firecracker may use beyond its guest's, MiB.
const VMM_MEMORY_OVERHEAD_MIB: u64 = 128;
/// Tasks (threads and processes) of one jailed Firecracker.
const VMM_PIDS_MAX: u32 = 256;
/// The `cpu.max` period, µs.
const CPU_PERIOD_US: u64 = 100_000;

/// Errors setting up a jail.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("cannot prepare the jail directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot put {from} into the jail")]
    Link {
        from: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the jail path {0} is too long for Unix socket paths; pick a shorter --jailer-chroot-base"
    )]
    TooLong(PathBuf),
}

/// How Firecracker is jailed: set once per daemon.
#[derive(Debug, Clone)]
pub struct JailerConfig {
    /// The `jailer` binary.
    pub binary: PathBuf,
    /// The VMM user's uid and gid (`emberd-vmm`).
    pub uid: u32,
    pub gid: u32,
    /// `--chroot-base-dir`, canonical; on the images' filesystem so that
    /// hard links work.
    pub chroot_base: PathBuf,
    /// Pass `cpu.max`, `memory.max` and `pids.max` (cgroup v2 with those
    /// controllers available).
    pub cgroups: bool,
}

impl JailerConfig {
    /// Creates the chroot base (mode 0711: the jailer needs no listing) and
    /// makes its path canonical, as the jailer does.
    pub fn prepare(mut self) -> Result<Self, JailError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&self.chroot_base)
            .and_then(|()| std::fs::canonicalize(&self.chroot_base))
            .map(|base| self.chroot_base = base)
            .map_err(|source| JailError::Dir {
                path: self.chroot_base.clone(),
                source,
            })?;
        Ok(self)
    }
}

/// Limits the jailer writes into the VMM's cgroup.
pub fn cgroup_limits(vcpus: u32, memory_mib: u32) -> Vec<String> {
    let memory = (u64::from(memory_mib) + VMM_MEMORY_OVERHEAD_MIB) * 1024 * 1024;
    vec![
        format!(
            "cpu.max={} {CPU_PERIOD_US}",
            u64::from(vcpus) * CPU_PERIOD_US
        ),
        format!("memory.max={memory}"),
        format!("pids.max={VMM_PIDS_MAX}"),
    ]
}

/// True when cgroup v2 is mounted with `cpu`, `memory` and `pids` available
/// at its root, where the jailer makes `<exec name>/<id>`.
pub fn cgroup_v2_usable() -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let Some(root) = mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, dir, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(dir))
    }) else {
        return false;
    };
    let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let have: Vec<&str> = controllers.split_whitespace().collect();
    ["cpu", "memory", "pids"].iter().all(|c| have.contains(c))
}

/// A jail younger than this without a pid file may be one being set up.
const SETUP_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes the jails under `<base>/<exec name>` whose VMM is gone (left by
/// a daemon that died): the pid file names no running Firecracker of that
/// id, or there is no pid file and the jail is older than a setup.
/// Returns how many were removed.
pub fn sweep_stale(config: &JailerConfig, firecracker: &Path) -> usize {
    let exec_name = firecracker.file_name().unwrap_or_default();
    let Ok(entries) = std::fs::read_dir(config.chroot_base.join(exec_name)) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        let mut pid_name = exec_name.to_owned();
        pid_name.push(".pid");
        let pid_file = entry.path().join("root").join(pid_name);
        let stale = match std::fs::read_to_string(&pid_file) {
            Ok(text) => !runs_as(text.trim(), &id),
            Err(_) => entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > SETUP_GRACE),
        };
        if stale && std::fs::remove_dir_all(entry.path()).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(removed, "removed jails left by an earlier daemon");
    }
    removed
}

/// True while process `pid` runs with `--id <id>` on its command line.
fn runs_as(pid: &str, id: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2)
        .any(|w| w[0] == b"--id" && w[1] == id.as_bytes())
}

/// One VM's jail: `<base>/<exec name>/<id>`, whose `root` is Firecracker's `/`.
#[derive(Debug)]
pub struct Jail {
    dir: PathBuf,
    root: PathBuf,
    exec_name: OsString,
}

impl Jail {
    /// Makes `<base>/<exec name>/<id>/root` (the jailer takes it as it is).
    pub fn create(config: &JailerConfig, firecracker: &Path, id: &str) -> Result<Jail, JailError> {
        let exec_name = firecracker
            .file_name()
            .map(OsString::from)
            .unwrap_or_else(|| "firecracker".into());
        let dir = config.chroot_base.join(&exec_name).join(id);
        let root = dir.join("root");
        let jail = Jail {
            dir,
            root,
            exec_name,
        };
        if jail.root.join("v.sock").as_os_str().len() > MAX_SOCKET_PATH {
            return Err(JailError::TooLong(jail.root.clone()));
        }
        // A leftover of an earlier VM of the same id must not leak in.
        let _ = std::fs::remove_dir_all(&jail.dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&jail.root)
            .map_err(|source| JailError::Dir {
                path: jail.root.clone(),
                source,
            })?;
        Ok(jail)
    }

    /// The chroot: where the daemon reaches what Firecracker sees at `/`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file the jailer writes the VMM's pid to under `--new-pid-ns`.
    pub fn pid_file(&self) -> PathBuf {
        let mut name = self.exec_name.clone();
        name.push(".pid");
        self.root.join(name)
    }

    /// Hard-links `from` into the jail as `/<name>` (copies it when it is on
    /// another filesystem); returns the path Firecracker sees.
    pub fn link_in(&self, from: &Path, name: &str) -> Result<String, JailError> {
        let to = self.root.join(name);
        let linked = match std::fs::hard_link(from, &to) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EXDEV) | Some(libc::EPERM)) => {
                std::fs::copy(from, &to).map(drop)
            }
            other => other,
        };
        linked.map_err(|source| JailError::Link {
            from: from.to_owned(),
            source,
        })?;
        Ok(format!("/{name}"))
    }

    /// Creates `/<name>` for the VMM user to write (Firecracker's log),
    /// never following a link.
    pub fn writable_file(&self, config: &JailerConfig, name: &str) -> std::io::Result<()> {
        let path = self.root.join(name);
        let file = std::fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        std::os::unix::fs::fchown(&file, Some(config.uid), Some(config.gid))
    }

    /// Moves `/<name>` (written by the VMM) out of the jail to `to`, owned
    /// by the daemon and only readable by the VMM group, so that no jailed
    /// VMM can change a file other VMs will read.
    pub fn take_out(&self, config: &JailerConfig, name: &str, to: &Path) -> std::io::Result<()> {
        let from = self.root.join(name);
        if std::fs::rename(&from, to).is_err() {
            std::fs::copy(&from, to)?;
            std::fs::remove_file(&from)?;
        }
        std::os::unix::fs::chown(to, Some(nix::unistd::geteuid().as_raw()), Some(config.gid))?;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o640))
    }

    /// The jailer's command line for this jail; `firecracker_args` go after `--`.
    pub fn command(
        &self,
        config: &JailerConfig,
        firecracker: &Path,
        id: &str,
        limits: Option<Vec<String>>,
        firecracker_args: &[&str],
    ) -> Command {
        let mut command = Command::new(&config.binary);
        command
            .arg("--id")
            .arg(id)
            .arg("--exec-file")
            .arg(firecracker)
            .arg("--uid")
            .arg(config.uid.to_string())
            .arg("--gid")
            .arg(config.gid.to_string())
            .arg("--chroot-base-dir")
            .arg(&config.chroot_base)
            .arg("--new-pid-ns");
        if let Some(limits) = limits {
            command.args(["--cgroup-version", "2"]);
            for limit in limits {
                command.arg("--cgroup").arg(limit);
            }
        }
        command.arg("--").args(firecracker_args);
        command
    }

    /// Removes the jail (call once its VMM has exited).
    pub fn remove(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(jail = %self.dir.display(), error = %e, "cannot remove a jail");
            }
        }
    }
}

impl Drop for Jail {
    /// A VM dropped without a stop (an abandoned boot) takes its jail along.
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(base: &Path) -> JailerConfig {
        JailerConfig {
            binary: PathBuf::from("/usr/bin/jailer"),
            uid: 990,
            gid: 991,
            chroot_base: base.to_owned(),
            cgroups: true,
        }
        .prepare()
        .unwrap()
    }

    #[test]
    fn the_command_line_carries_the_identity_the_chroot_and_the_namespaces() {
        let base = tempfile::tempdir().unwrap();
        let config = config(base.path());
        let fc = Path::new("/usr/bin/firecracker");
        let jail = Jail::create(&config, fc, "sb-0123456789ab").unwrap();
        assert_eq!(
            jail.root(),
            config.chroot_base.join("firecracker/sb-0123456789ab/root")
        );
        assert_eq!(jail.pid_file(), jail.root().join("firecracker.pid"));
        let command = jail.command(
            &config,
            fc,
            "sb-0123456789ab",
            Some(cgroup_limits(2, 256)),
            &["--api-sock", "/fc.sock"],
        );
        let args: Vec<String> = command
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let base = config.chroot_base.display().to_string();
        let expected = [
            "--id",
            "sb-0123456789ab",
            "--exec-file",
            "/usr/bin/firecracker",
            "--uid",
            "990",
            "--gid",
            "991",
            "--chroot-base-dir",
            base.as_str(),
            "--new-pid-ns",
            "--cgroup-version",
            "2",
            "--cgroup",
            "cpu.max=200000 100000",
            "--cgroup",
            "memory.max=402653184",
            "--cgroup",
            "pids.max=256",
            "--",
            "--api-sock",
            "/fc.sock",
        ];
        assert_eq!(args, expected);
        jail.remove();
        assert!(!jail.root().exists());
    }

    #[test]
    fn files_are_linked_in_and_snapshots_taken_out_read_only() {
        let base = tempfile::tempdir().unwrap();
        let config = config(&base.path().join("jail"));
        let jail = Jail::create(&config, Path::new("/bin/firecracker"), "sb-1").unwrap();
        let kernel = base.path().join("vmlinux");
        std::fs::write(&kernel, b"kernel").unwrap();
        assert_eq!(jail.link_in(&kernel, "vmlinux").unwrap(), "/vmlinux");
        use std::os::unix::fs::MetadataExt;
        let (a, b) = (
            std::fs::metadata(&kernel).unwrap(),
            std::fs::metadata(jail.root().join("vmlinux")).unwrap(),
        );
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()), "a hard link");

        std::fs::write(jail.root().join("vm.mem"), b"memory").unwrap();
        let out = base.path().join("vm.mem");
        jail.take_out(&config, "vm.mem", &out).unwrap();
        assert!(!jail.root().join("vm.mem").exists());
        let meta = std::fs::metadata(&out).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o640);
        assert_eq!(meta.gid(), 991);

        jail.writable_file(&config, "fc.log").unwrap();
        let log = std::fs::metadata(jail.root().join("fc.log")).unwrap();
        assert_eq!(
            (log.uid(), log.gid(), log.mode() & 0o777),
            (990, 991, 0o600)
        );
    }

    #[test]
    fn jails_whose_vmm_is_gone_are_swept_and_live_ones_kept() {
        let base = tempfile::tempdir().unwrap();
        let config = config(base.path());
        let fc = Path::new("/usr/bin/firecracker");
        let mut live = std::process::Command::new("/usr/bin/python3")
            .args(["-c", "import time; time.sleep(300)", "--id", "sb-live"])
            .spawn()
            .unwrap();
        // A process just spawned may not show its new command line yet.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !runs_as(&live.id().to_string(), "sb-live") && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let jails: Vec<Jail> = ["sb-live", "sb-dead", "sb-new"]
            .iter()
            .map(|id| Jail::create(&config, fc, id).unwrap())
            .collect();
        std::fs::write(jails[0].pid_file(), live.id().to_string()).unwrap();
        std::fs::write(jails[1].pid_file(), "999999999").unwrap();
        assert_eq!(sweep_stale(&config, fc), 1);
        assert!(jails[0].root().exists(), "a running VMM's jail is kept");
        assert!(!jails[1].root().exists(), "a dead VMM's jail is removed");
        assert!(jails[2].root().exists(), "a jail being set up is kept");
        live.kill().unwrap();
        live.wait().unwrap();
        assert_eq!(sweep_stale(&config, fc), 1);
    }

    #[test]
    fn a_base_too_long_for_socket_paths_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let config = config(&base.path().join("x".repeat(90)));
        let err = Jail::create(&config, Path::new("/bin/firecracker"), "sb-1").unwrap_err();
        assert!(matches!(err, JailError::TooLong(_)), "{err}");
    }
}
