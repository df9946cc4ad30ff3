//! The work dir at startup, through `Manager::new` on the fake backend:
//! only a directory that is the daemon's own (its uid, mode 0700, not a
//! symlink) is taken; a missing one is created private; the recovery of a
//! crashed daemon's leftovers matches the work dir however it is spelled.
//! These tests run as root (they chown to nobody).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use emberd::image::fake_manifest;
use emberd::sandbox::{Limits, Manager, ManagerConfig, WorkDirError};
use emberd::vmm::fake::FakeBackend;

fn config(work_dir: &Path) -> ManagerConfig {
    ManagerConfig {
        work_dir: work_dir.to_owned(),
        vcpus: 1,
        memory_mib: 256,
        boot_timeout: Duration::from_secs(5),
        overlay_mib: 64,
        pool_size: 0,
        pool_memory_mib: 1024,
        pool: emberd::sandbox::PoolPolicy::default(),
        standby_vmms: 0,
        snapshot_dir: None,
        warm_templates_at_start: false,
        limits: Limits::default(),
    }
}

fn manager(root: &Path, work_dir: &Path) -> Result<Manager, WorkDirError> {
    let manifest = fake_manifest(&root.join("data"), "echo:warm");
    Manager::new(Arc::new(FakeBackend::new()), manifest, config(work_dir))
}

fn private(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn a_missing_work_dir_is_created_private() {
    let root = tempfile::tempdir().unwrap();
    let work = root.path().join("a").join("work");
    let _manager = manager(root.path(), &work).unwrap();
    let meta = std::fs::symlink_metadata(&work).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o777, 0o700);
}

#[test]
fn a_symlinked_work_dir_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let target = root.path().join("target");
    private(&target);
    let link = root.path().join("work");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let refused = manager(root.path(), &link).err();
    assert!(
        matches!(refused, Some(WorkDirError::Symlink(_))),
        "{refused:?}"
    );
    // Nothing was written through the link.
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
}

#[test]
fn a_work_dir_owned_by_another_user_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let work = root.path().join("work");
    private(&work);
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("a `nobody` user");
    nix::unistd::chown(&work, Some(nobody.uid), Some(nobody.gid)).unwrap();
    let refused = manager(root.path(), &work).err();
    assert!(
        matches!(refused, Some(WorkDirError::Owner { owner, .. }) if owner == nobody.uid.as_raw()),
        "{refused:?}"
    );
    let message = refused.unwrap().to_string();
    assert!(message.contains("belongs to uid"), "{message}");
}

#[test]
fn a_work_dir_open_to_group_or_others_is_refused() {
    let root = tempfile::tempdir().unwrap();
    for mode in [0o750, 0o705, 0o777, 0o1777] {
        let work = root.path().join(format!("work-{mode:o}"));
        private(&work);
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(mode)).unwrap();
        let refused = manager(root.path(), &work).err();
        assert!(
            matches!(refused, Some(WorkDirError::Mode { .. })),
            "mode {mode:o}: {refused:?}"
        );
    }
}

#[test]
fn a_file_as_work_dir_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let work = root.path().join("work");
    std::fs::write(&work, b"").unwrap();
    let refused = manager(root.path(), &work).err();
    assert!(
        matches!(refused, Some(WorkDirError::NotADirectory(_))),
        "{refused:?}"
    );
}

#[test]
fn leftovers_are_recovered_when_the_work_dir_has_a_trailing_slash() {
    let root = tempfile::tempdir().unwrap();
    let work = root.path().join("work");
    private(&work);
    let sandbox = work.join("sb_0123456789ab");
    std::fs::create_dir(&sandbox).unwrap();
    // A stand-in VM of the crashed daemon, started without the slash.
    let marker = sandbox.join("console.log");
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import time; time.sleep(60)"])
        .arg(&marker)
        .spawn()
        .unwrap();
    let cmdline = format!("/proc/{}/cmdline", child.id());
    let shown = marker.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read(&cmdline).is_ok_and(|c| String::from_utf8_lossy(&c).contains(&shown)) {
        assert!(Instant::now() < deadline, "the stand-in never started");
        std::thread::sleep(Duration::from_millis(5));
    }

    let with_slash = PathBuf::from(format!("{}/", work.display()));
    let _manager = manager(root.path(), &with_slash).unwrap();
    assert!(!sandbox.exists(), "the leftover directory stayed");
    let status = child.wait().unwrap();
    assert!(!status.success(), "the leftover VM was not killed");
}
