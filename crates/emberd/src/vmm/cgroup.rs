//! cgroup v2 groups for VMM processes: one per VM, with CPU, memory and
//! task limits, under the daemon's own cgroup.
//!
//! Layout, with `D` the daemon's cgroup at start-up:
//! `D/daemon` (a leaf the daemon moves itself into, so that `D` holds no
//! process and may enable controllers for its children) and
//! `D/emberd/<sandbox id>` (one leaf per VMM). Owns the probe (is cgroup v2
//! mounted and may `D` hand `cpu`, `memory` and `pids` down), the set-up,
//! the per-VM group and its removal. Best effort as a whole: a host without
//! delegation runs VMMs without groups. Must never write outside `D`.

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the unified hierarchy is mounted on systemd hosts.
pub const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
/// The controllers a VMM's limits use.
pub const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];
/// The scheduler period `cpu.max` is expressed in, microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// Memory a VMM may use beyond its guest's RAM and translation cache:
/// QEMU's own heap, device state, libraries and page cache of the files it
/// writes (a 256 MiB TCG guest measured 330 to 410 MiB resident in all).
pub const MEMORY_OVERHEAD_MIB: u64 = 256;
/// Tasks (threads) a VMM may have: QEMU's I/O thread pool tops out at 64
/// workers, plus one thread per vCPU and a handful of its own.
pub const PIDS_BASE: u64 = 128;

/// Why VMMs get no cgroup, or a group could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup v2 is not mounted at {0} (a cgroup v1 or hybrid hierarchy)")]
    NotUnified(PathBuf),
    #[error("the daemon is in no cgroup v2 group")]
    NoGroup,
    #[error("the daemon's cgroup {group} cannot delegate {missing} (it has [{available}])")]
    MissingControllers {
        group: PathBuf,
        missing: String,
        available: String,
    },
    #[error("the daemon's cgroup {0} holds other processes, so it cannot enable controllers for children")]
    Shared(PathBuf),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// The limits of one VMM's group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmLimits {
    pub vcpus: u32,
    pub memory_mib: u32,
    /// TCG's bounded translation cache (`tb-size`); 0 under KVM.
    pub translation_cache_mib: u32,
}

impl VmmLimits {
    /// `cpu.max`: as many CPUs as the guest has vCPUs.
    pub fn cpu_max(&self) -> String {
        format!("{} {CPU_PERIOD_US}", u64::from(self.vcpus) * CPU_PERIOD_US)
    }

    /// `memory.max`, bytes: guest RAM, translation cache and
    /// [`MEMORY_OVERHEAD_MIB`].
    pub fn memory_max(&self) -> u64 {
        (u64::from(self.memory_mib) + u64::from(self.translation_cache_mib) + MEMORY_OVERHEAD_MIB)
            << 20
    }

    /// `pids.max`.
    pub fn pids_max(&self) -> u64 {
        PIDS_BASE + u64::from(self.vcpus)
    }
}

/// The parent of every VMM's group: `D/emberd`.
#[derive(Debug)]
pub struct VmmCgroups {
    parent: PathBuf,
}

impl VmmCgroups {
    /// Probes the host and sets the layout up for this process; an error
    /// says why VMMs run without groups.
    pub fn setup() -> Result<VmmCgroups, CgroupError> {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        Self::setup_at(Path::new(CGROUP_MOUNT), &own, std::process::id())
    }

    /// Says whether [`VmmCgroups::setup`] could work here, changing nothing:
    /// the daemon's group, on success.
    pub fn probe() -> Result<PathBuf, CgroupError> {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        probe_at(Path::new(CGROUP_MOUNT), &own)
    }

    /// [`VmmCgroups::setup`] on the hierarchy mounted at `mount`, for the
    /// process `pid` whose `/proc/<pid>/cgroup` reads `own`.
    pub fn setup_at(mount: &Path, own: &str, pid: u32) -> Result<VmmCgroups, CgroupError> {
        let group = probe_at(mount, own)?;
        let is_root = group == mount;
        let enable = format!("+{}", CONTROLLERS.join(" +"));
        if !is_root && !enabled(&group)? {
            // No internal processes: a non-root group with controllers on
            // for its children must hold no process itself, so the daemon
            // moves into a leaf first, unless others share its group.
            let procs = group.join("cgroup.procs");
            let members = std::fs::read_to_string(&procs).map_err(io("read", &procs))?;
            if members
                .split_whitespace()
                .any(|member| member != pid.to_string())
            {
                return Err(CgroupError::Shared(group));
            }
            let leaf = group.join("daemon");
            make_dir(&leaf)?;
            write(&leaf.join("cgroup.procs"), &pid.to_string())?;
            write(&group.join("cgroup.subtree_control"), &enable)?;
        } else if is_root {
            write(&group.join("cgroup.subtree_control"), &enable)?;
        }
        let parent = group.join("emberd");
        make_dir(&parent)?;
        write(&parent.join("cgroup.subtree_control"), &enable)?;
        let cgroups = VmmCgroups { parent };
        cgroups.sweep();
        Ok(cgroups)
    }

    /// `D/emberd`.
    pub fn parent(&self) -> &Path {
        &self.parent
    }

    /// Makes the group of one VMM with its limits; the VMM joins it with
    /// [`VmmCgroup::procs_fd`] before it runs.
    pub fn create(&self, sandbox_id: &str, limits: VmmLimits) -> Result<VmmCgroup, CgroupError> {
        if sandbox_id.is_empty() || sandbox_id.contains(['/', '.']) {
            return Err(CgroupError::Io {
                action: "name a group after",
                path: PathBuf::from(sandbox_id),
                source: ErrorKind::InvalidInput.into(),
            });
        }
        let path = self.parent.join(sandbox_id);
        // A leftover of a crashed daemon, empty since its VMM died with it.
        let _ = std::fs::remove_dir(&path);
        make_dir(&path)?;
        // Removed again if a limit cannot be set.
        let mut group = VmmCgroup {
            procs: None,
            path: path.clone(),
        };
        write(&path.join("cpu.max"), &limits.cpu_max())?;
        write(&path.join("memory.max"), &limits.memory_max().to_string())?;
        write(&path.join("pids.max"), &limits.pids_max().to_string())?;
        let procs_path = path.join("cgroup.procs");
        let procs = File::options()
            .write(true)
            .create(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&procs_path)
            .map_err(io("open", &procs_path))?;
        group.procs = Some(procs);
        Ok(group)
    }

    /// Removes the empty groups a crashed daemon left behind.
    fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(&self.parent) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }
}

/// The daemon's cgroup, when it can hand the VMM controllers down.
fn probe_at(mount: &Path, own: &str) -> Result<PathBuf, CgroupError> {
    if !mount.join("cgroup.controllers").is_file() {
        return Err(CgroupError::NotUnified(mount.to_owned()));
    }
    let relative = own
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or(CgroupError::NoGroup)?
        .trim();
    let relative = relative.trim_start_matches('/');
    if relative.split('/').any(|part| part == "..") {
        return Err(CgroupError::NoGroup);
    }
    let group = mount.join(relative);
    let controllers = group.join("cgroup.controllers");
    let available = std::fs::read_to_string(&controllers).map_err(io("read", &controllers))?;
    let missing: Vec<&str> = CONTROLLERS
        .into_iter()
        .filter(|name| !has(&available, name))
        .collect();
    if !missing.is_empty() {
        return Err(CgroupError::MissingControllers {
            group,
            missing: missing.join(", "),
            available: available.trim().to_owned(),
        });
    }
    Ok(group)
}

/// Whether `group` already enables every controller for its children.
fn enabled(group: &Path) -> Result<bool, CgroupError> {
    let path = group.join("cgroup.subtree_control");
    let text = std::fs::read_to_string(&path).map_err(io("read", &path))?;
    Ok(CONTROLLERS.iter().all(|name| has(&text, name)))
}

fn has(list: &str, name: &str) -> bool {
    list.split_whitespace()
        .any(|entry| entry.trim_start_matches('+') == name)
}

fn make_dir(path: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io("create", path)(e)),
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io("write", path))
}

/// One VMM's group; removed on drop (once its process is gone, the
/// directory is empty to the kernel).
#[derive(Debug)]
pub struct VmmCgroup {
    path: PathBuf,
    procs: Option<File>,
}

impl VmmCgroup {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An open `cgroup.procs` of the group: writing `0` to it moves the
    /// writer in (done between fork and exec, so that everything the VMM
    /// ever allocates is charged to the group).
    pub fn procs_fd(&self) -> Option<RawFd> {
        self.procs.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Removes the group after its process was reaped, retrying briefly
    /// while the kernel still counts the exiting task.
    pub async fn remove(mut self) -> Result<(), CgroupError> {
        self.procs = None;
        let mut tries = 0;
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(io("remove", &self.path)(e)),
            }
        }
    }
}

impl Drop for VmmCgroup {
    fn drop(&mut self) {
        self.procs = None;
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cgroup2 mount in a temp dir with the daemon in `/system/emberd.service`.
    fn fake_tree(controllers: &str, members: &str) -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), controllers).unwrap();
        let group = root.path().join("system/emberd.service");
        std::fs::create_dir_all(&group).unwrap();
        std::fs::write(group.join("cgroup.controllers"), controllers).unwrap();
        std::fs::write(group.join("cgroup.subtree_control"), "").unwrap();
        std::fs::write(group.join("cgroup.procs"), members).unwrap();
        (root, group)
    }

    const OWN: &str = "0::/system/emberd.service\n";

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn the_daemon_moves_to_a_leaf_and_vmm_groups_get_their_limits() {
        let (root, group) = fake_tree("cpuset cpu io memory pids\n", "4242\n");
        let cgroups = VmmCgroups::setup_at(root.path(), OWN, 4242).unwrap();
        assert_eq!(read(&group.join("daemon/cgroup.procs")), "4242");
        assert_eq!(
            read(&group.join("cgroup.subtree_control")),
            "+cpu +memory +pids"
        );
        assert_eq!(cgroups.parent(), group.join("emberd"));
        assert_eq!(
            read(&group.join("emberd/cgroup.subtree_control")),
            "+cpu +memory +pids"
        );

        let limits = VmmLimits {
            vcpus: 2,
            memory_mib: 512,
            translation_cache_mib: 0,
        };
        let vm = cgroups.create("sb_0123456789ab", limits).unwrap();
        let dir = group.join("emberd/sb_0123456789ab");
        assert_eq!(vm.path(), dir);
        assert_eq!(read(&dir.join("cpu.max")), "200000 100000");
        assert_eq!(
            read(&dir.join("memory.max")),
            ((512 + MEMORY_OVERHEAD_MIB) << 20).to_string()
        );
        assert_eq!(read(&dir.join("pids.max")), (PIDS_BASE + 2).to_string());
        assert!(vm.procs_fd().is_some());
    }

    #[tokio::test]
    async fn a_group_is_removed_once_its_process_is_gone() {
        let (root, group) = fake_tree("cpu memory pids\n", "7\n");
        let cgroups = VmmCgroups::setup_at(root.path(), OWN, 7).unwrap();
        let limits = VmmLimits {
            vcpus: 1,
            memory_mib: 256,
            translation_cache_mib: 0,
        };
        let vm = cgroups.create("sb_000000000001", limits).unwrap();
        let dir = group.join("emberd/sb_000000000001");
        // cgroupfs drops a group's interface files with the group; a plain
        // directory needs them gone first.
        for file in ["cpu.max", "memory.max", "pids.max", "cgroup.procs"] {
            std::fs::remove_file(dir.join(file)).unwrap();
        }
        vm.remove().await.unwrap();
        assert!(!dir.exists());
    }

    #[test]
    fn a_host_without_delegation_gets_no_groups_and_a_reason() {
        let v1 = tempfile::tempdir().unwrap();
        let err = VmmCgroups::setup_at(v1.path(), OWN, 1).unwrap_err();
        assert!(matches!(err, CgroupError::NotUnified(_)), "{err}");
        assert!(err.to_string().contains("hybrid"), "{err}");

        let (root, _) = fake_tree("cpu io\n", "1\n");
        let err = VmmCgroups::setup_at(root.path(), OWN, 1).unwrap_err();
        assert!(
            err.to_string().contains("cannot delegate memory, pids"),
            "{err}"
        );

        let (root, group) = fake_tree("cpu memory pids\n", "1\n2\n");
        let err = VmmCgroups::setup_at(root.path(), OWN, 1).unwrap_err();
        assert!(matches!(err, CgroupError::Shared(_)), "{err}");
        // Nothing was moved or enabled.
        assert!(!group.join("daemon").exists());
        assert_eq!(read(&group.join("cgroup.subtree_control")), "");

        let (root, _) = fake_tree("cpu memory pids\n", "1\n");
        let err = VmmCgroups::setup_at(root.path(), "0::/../../etc\n", 1).unwrap_err();
        assert!(matches!(err, CgroupError::NoGroup), "{err}");
    }

    #[test]
    fn an_enabled_group_is_used_as_it_is_and_stale_groups_are_swept() {
        let (root, group) = fake_tree("cpu memory pids\n", "");
        std::fs::write(group.join("cgroup.subtree_control"), "cpu memory pids\n").unwrap();
        std::fs::create_dir_all(group.join("emberd/sb_00000000dead")).unwrap();
        let cgroups = VmmCgroups::setup_at(root.path(), OWN, 9).unwrap();
        assert!(
            !group.join("daemon").exists(),
            "the daemon moved needlessly"
        );
        assert!(!group.join("emberd/sb_00000000dead").exists());
        assert!(cgroups
            .create(
                "../escape",
                VmmLimits {
                    vcpus: 1,
                    memory_mib: 64,
                    translation_cache_mib: 0,
                }
            )
            .is_err());
    }

    #[test]
    fn limits_scale_with_the_shape() {
        let limits = VmmLimits {
            vcpus: 4,
            memory_mib: 1024,
            translation_cache_mib: 0,
        };
        assert_eq!(limits.cpu_max(), "400000 100000");
        assert_eq!(
            limits.memory_max(),
            (1024 + MEMORY_OVERHEAD_MIB) * 1024 * 1024
        );
        assert_eq!(limits.pids_max(), PIDS_BASE + 4);
    }
}
