//! Template storage: one warmed-up, quiesced VM image per pack, on disk.
//!
//! A template is taken from a cold-booted VM after a warm-up exec and
//! `Quiesce`, with the agent connection closed before the pause (the agent
//! then waits for a new connection, which is what a restored clone gets).
//! It lives under `<data_dir>/snapshots/<pack>-<key>`, where the key hashes
//! everything that shapes the VM image: kernel, initramfs, pack, boot
//! arguments, vCPUs, memory, backend and its version, and the host a
//! snapshot depends on (CPU model and flags, kernel release). Templates are written
//! to a staging directory named for this daemon (several daemons may share
//! a data dir) and renamed into place; templates of the same pack with
//! another key are removed.
//!
//! A template is removed only when its integrity check fails
//! ([`super::integrity`]), and then only once no restore of this daemon
//! reads it: restores hold a [`Lease`]. A restore that fails for any
//! other reason (a timeout under load, a VMM refusing it) keeps it, and
//! one that fails on an intact template gives the pack's restores up for
//! the daemon's lifetime ([`super::give_up`]): neither restored nor rebuilt.

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use super::give_up::GiveUp;
use super::integrity::{self, IntegrityError};
use super::lease::{Entry, Lease};
use crate::vmm::{BootSpec, SnapshotFiles};

/// The template layout, hashed into every key: a new layout gets new keys,
/// so templates of an older one are replaced, never misread.
const TEMPLATE_FORMAT: &str = "format 3: ram file";
/// Prefix of staging directories (and of their owners' lock files).
const STAGING_PREFIX: &str = ".staging-";
/// Suffix of the lock file its builder holds beside a staging directory.
const OWNER_LOCK_SUFFIX: &str = ".lock";

/// A staging directory of this daemon and the lock that says its builder
/// is alive. Removed on drop unless published.
pub(in crate::sandbox) struct Staging {
    pub dir: PathBuf,
    lock_path: PathBuf,
    _owner: Flock<File>,
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// Templates known to this daemon, per pack.
pub(in crate::sandbox) struct Templates {
    root: PathBuf,
    /// Names this daemon's staging directories apart from other daemons'.
    tag: String,
    ready: Mutex<HashMap<String, Arc<Entry>>>,
    /// Templates that failed their integrity check, by directory: never
    /// used again, removed when their last reader leaves, superseded when a
    /// new template is published in their place.
    condemned: Mutex<HashMap<PathBuf, Arc<Entry>>>,
    /// Packs whose template is being built, or whose build failed.
    building: Mutex<HashSet<String>>,
    /// Packs whose restores were given up.
    give_up: GiveUp,
}

impl Templates {
    pub(in crate::sandbox) fn new(root: PathBuf) -> Self {
        Templates {
            root,
            tag: format!("{}-{:08x}", std::process::id(), rand::random::<u32>()),
            ready: Mutex::new(HashMap::new()),
            condemned: Mutex::new(HashMap::new()),
            building: Mutex::new(HashSet::new()),
            give_up: GiveUp::default(),
        }
    }

    /// The directory all templates live in.
    pub(in crate::sandbox) fn root(&self) -> &Path {
        &self.root
    }

    /// The key of a template for VMs booted from `spec` (ids and dirs
    /// aside) by `backend` at `backend_version` on host `host` (see
    /// [`super::host_fingerprint`]).
    pub(in crate::sandbox) fn key(
        spec: &BootSpec,
        backend: &str,
        backend_version: &str,
        host: &str,
    ) -> String {
        let mut hash = Sha256::new();
        for part in [
            spec.kernel_bzimage.display().to_string(),
            spec.kernel_vmlinux.display().to_string(),
            spec.initramfs.display().to_string(),
            spec.root_disk.display().to_string(),
            spec.extra_kernel_args.join(" "),
            spec.vcpus.to_string(),
            spec.memory_mib.to_string(),
            backend.to_owned(),
            backend_version.to_owned(),
            host.to_owned(),
            env!("CARGO_PKG_VERSION").to_owned(),
            // The layout: device state plus a copy-on-write RAM file.
            TEMPLATE_FORMAT.to_owned(),
        ] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        hex::encode(&hash.finalize()[..8])
    }

    fn dir_for(&self, pack: &str, key: &str) -> PathBuf {
        self.root.join(format!("{pack}-{key}"))
    }

    /// The published template of `pack` with `key`, looking on disk too
    /// (where it must pass the quick integrity check to count).
    fn entry(&self, pack: &str, key: &str) -> Option<Arc<Entry>> {
        if self.give_up.is_given_up(pack) {
            return None;
        }
        let dir = self.dir_for(pack, key);
        if let Some(entry) = self.ready.lock().get(pack) {
            if entry.files.dir == dir {
                return Some(entry.clone());
            }
        }
        if self.condemned.lock().contains_key(&dir) {
            return None;
        }
        match integrity::check_quick(&dir, key) {
            Ok(()) => {}
            Err(IntegrityError::NoMarker) => return None,
            Err(e) => {
                // Corrupt or of an older format, and no restore of this
                // daemon reads it: removed now, rebuilt on the pack's next
                // cold boot.
                tracing::warn!(template = %dir.display(), error = %crate::error_chain::render(&e), "template on disk fails its integrity check");
                let lease = Entry::new(dir, key).lease().expect("a new entry");
                self.condemn(pack, &lease);
                return None;
            }
        }
        let entry = Entry::new(dir, key);
        self.ready.lock().insert(pack.to_owned(), entry.clone());
        Some(entry)
    }

    /// The usable template of `pack` with `key`, looking on disk too.
    pub(in crate::sandbox) fn get(&self, pack: &str, key: &str) -> Option<SnapshotFiles> {
        self.entry(pack, key).map(|e| e.files.clone())
    }

    /// A hold on the usable template of `pack` with `key`, for a restore.
    /// The quick integrity check runs first (a few `stat`s): a template
    /// whose files changed size or went missing is condemned, not restored.
    pub(in crate::sandbox) fn lease(&self, pack: &str, key: &str) -> Option<Lease> {
        let lease = self.entry(pack, key)?.lease()?;
        if let Err(e) = integrity::check_quick(&lease.files().dir, key) {
            tracing::warn!(pack, template = %lease.files().dir.display(), error = %crate::error_chain::render(&e), "the template is corrupt; it will be removed and rebuilt");
            self.condemn(pack, &lease);
            return None;
        }
        Some(lease)
    }

    /// True while `lease` holds the template a restore of `pack` would use
    /// now: not condemned, not replaced by a rebuild, its pack not given up.
    /// Reads memory only.
    pub(in crate::sandbox) fn is_current(&self, pack: &str, lease: &Lease) -> bool {
        !self.give_up.is_given_up(pack)
            && self
                .ready
                .lock()
                .get(pack)
                .is_some_and(|entry| lease.is_of(entry))
    }

    /// Forgets the leased template, which failed its integrity check, and
    /// removes it once no restore reads it any more.
    pub(in crate::sandbox) fn condemn(&self, pack: &str, lease: &Lease) {
        {
            let mut ready = self.ready.lock();
            if ready.get(pack).is_some_and(|e| lease.is_of(e)) {
                ready.remove(pack);
            }
        }
        let entry = lease.condemn();
        self.condemned.lock().insert(entry.files.dir.clone(), entry);
    }

    /// Claims the right to build the template of `pack`; false when a build
    /// is under way or already failed in this daemon's lifetime.
    pub(in crate::sandbox) fn claim_build(&self, pack: &str) -> bool {
        !self.give_up.is_given_up(pack) && self.building.lock().insert(pack.to_owned())
    }

    /// True once the restores of `pack` were given up (see [`super::give_up`]).
    pub(in crate::sandbox) fn restores_given_up(&self, pack: &str) -> bool {
        self.give_up.is_given_up(pack)
    }

    /// A restore of `pack` worked.
    pub(in crate::sandbox) fn restore_succeeded(&self, pack: &str) {
        self.give_up.succeeded(pack);
    }

    /// A restore of `pack` timed out; logs and returns true when that gave
    /// its restores up.
    pub(in crate::sandbox) fn restore_timed_out(&self, pack: &str) -> bool {
        let gave_up = self.give_up.timed_out(pack);
        if gave_up {
            tracing::warn!(
                pack,
                timeouts = super::give_up::TIMEOUTS_BEFORE_GIVING_UP,
                "restores of this pack time out again and again; the pack cold-boots until the daemon restarts"
            );
        }
        gave_up
    }

    /// A restore of `pack` failed on an intact template with `error`: the
    /// pack's restores are given up (logged once) and its template is left
    /// alone, neither restored nor rebuilt, until the daemon restarts.
    pub(in crate::sandbox) fn restore_refused(&self, pack: &str, error: &str) {
        if self.give_up.failed(pack) {
            tracing::warn!(
                pack,
                error,
                "the VMM cannot restore this pack's intact template; the pack cold-boots until the daemon restarts"
            );
        }
        self.ready.lock().remove(pack);
    }

    /// How many packs' restores were given up since the daemon started.
    pub(in crate::sandbox) fn packs_given_up(&self) -> u64 {
        self.give_up.count()
    }

    /// Ends a build claim. A failed build stays claimed so it is not retried
    /// in a loop; a successful one is released.
    pub(in crate::sandbox) fn finish_build(&self, pack: &str, ok: bool) {
        if ok {
            self.building.lock().remove(pack);
        }
    }

    /// A fresh staging directory of this daemon for a template being
    /// written, with the lock that tells other daemons it is in use.
    pub(in crate::sandbox) fn staging_dir(
        &self,
        pack: &str,
        key: &str,
    ) -> std::io::Result<Staging> {
        std::fs::create_dir_all(&self.root)?;
        let name = format!("{STAGING_PREFIX}{pack}-{key}-{}", self.tag);
        let dir = self.root.join(&name);
        // The lock exists (and is held) before the directory does, so that
        // no other daemon ever sees this directory unowned.
        let lock_path = self.root.join(format!("{name}{OWNER_LOCK_SUFFIX}"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        let owner = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| std::io::Error::from(e))?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir)?;
        Ok(Staging {
            dir,
            lock_path,
            _owner: owner,
        })
    }

    /// Seals a finished staging dir (checksums in its marker), moves it into
    /// place and removes stale templates. Blocking (hashes the files).
    pub(in crate::sandbox) fn publish(
        &self,
        pack: &str,
        key: &str,
        staging: &Staging,
    ) -> std::io::Result<SnapshotFiles> {
        integrity::write_marker(&staging.dir, key)?;
        let dir = self.dir_for(pack, key);
        // A condemned template here is replaced now (its readers keep their
        // open files), so its last reader must not remove the new one.
        if let Some(old) = self.condemned.lock().remove(&dir) {
            old.supersede();
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&staging.dir, &dir)?;
        self.remove_stale(pack, key);
        let entry = Entry::new(dir, key);
        let files = entry.files.clone();
        self.ready.lock().insert(pack.to_owned(), entry);
        Ok(files)
    }

    /// Removes templates of `pack` with another key, and staging dirs of
    /// `pack` whose builder (in any daemon) is gone.
    fn remove_stale(&self, pack: &str, key: &str) {
        let keep = format!("{pack}-{key}");
        let prefix = format!("{pack}-");
        let staging_prefix = format!("{STAGING_PREFIX}{pack}-");
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale_template = name.starts_with(&prefix)
                && name != keep
                && name[prefix.len()..].bytes().all(|b| b.is_ascii_hexdigit());
            if stale_template {
                tracing::info!(template = %name, "removing stale template");
                let _ = std::fs::remove_dir_all(entry.path());
            } else if name.starts_with(&staging_prefix)
                && !name.ends_with(OWNER_LOCK_SUFFIX)
                && self.staging_is_abandoned(&name)
            {
                tracing::info!(staging = %name, "removing an abandoned staging template");
                let _ = std::fs::remove_dir_all(entry.path());
                let _ = std::fs::remove_file(self.root.join(format!("{name}{OWNER_LOCK_SUFFIX}")));
            }
        }
    }

    /// True when nobody holds the owner lock of staging dir `name` (its
    /// builder died), or when it has none (left by an older daemon).
    fn staging_is_abandoned(&self, name: &str) -> bool {
        let lock_path = self.root.join(format!("{name}{OWNER_LOCK_SUFFIX}"));
        let Ok(file) = File::options().write(true).open(&lock_path) else {
            return !lock_path.exists();
        };
        Flock::lock(file, FlockArg::LockExclusiveNonblock).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec(memory_mib: u32) -> BootSpec {
        BootSpec {
            sandbox_id: "sb_000000000000".into(),
            sandbox_dir: "/tmp/x".into(),
            kernel_bzimage: "/d/blobs/k".into(),
            kernel_vmlinux: "/d/blobs/v".into(),
            initramfs: "/d/blobs/i".into(),
            root_disk: "/d/blobs/p".into(),
            vcpus: 1,
            memory_mib,
            extra_kernel_args: vec![],
            boot_timeout: Duration::from_secs(1),
            memory_file: None,
        }
    }

    #[test]
    fn keys_change_with_what_shapes_the_vm_only() {
        let a = Templates::key(&spec(256), "qemu", "7.2", "host a");
        let mut other_sandbox = spec(256);
        other_sandbox.sandbox_id = "sb_111111111111".into();
        other_sandbox.sandbox_dir = "/tmp/y".into();
        assert_eq!(a, Templates::key(&other_sandbox, "qemu", "7.2", "host a"));
        assert_ne!(a, Templates::key(&spec(512), "qemu", "7.2", "host a"));
        assert_ne!(a, Templates::key(&spec(256), "qemu", "8.0", "host a"));
        assert_ne!(
            a,
            Templates::key(&spec(256), "qemu", "7.2", "host b"),
            "another CPU or host kernel"
        );
    }

    #[test]
    fn publishing_replaces_stale_templates_of_the_same_pack() {
        let root = tempfile::tempdir().unwrap();
        let templates = Templates::new(root.path().to_owned());
        let old = root.path().join("python-00000000000000aa");
        std::fs::create_dir(&old).unwrap();
        let other_pack = root.path().join("shell-00000000000000aa");
        std::fs::create_dir(&other_pack).unwrap();
        let staging = templates.staging_dir("python", "00000000000000bb").unwrap();
        std::fs::write(staging.dir.join("vm.migration"), b"x").unwrap();
        let files = templates
            .publish("python", "00000000000000bb", &staging)
            .unwrap();
        drop(staging);
        assert!(files.dir.join("vm.migration").is_file());
        assert!(!old.exists());
        assert!(other_pack.exists());
        assert!(templates.get("python", "00000000000000bb").is_some());
        // A second store (another daemon) finds it on disk and trusts it.
        let other = Templates::new(root.path().to_owned());
        assert_eq!(
            other.get("python", "00000000000000bb").map(|f| f.dir),
            Some(files.dir)
        );
    }

    fn published(templates: &Templates, key: &str) -> SnapshotFiles {
        let staging = templates.staging_dir("python", key).unwrap();
        std::fs::write(staging.dir.join("vm.migration"), b"memory").unwrap();
        templates.publish("python", key, &staging).unwrap()
    }

    #[test]
    fn a_condemned_template_goes_only_when_its_last_reader_leaves() {
        let root = tempfile::tempdir().unwrap();
        let templates = Templates::new(root.path().to_owned());
        let key = "00000000000000cc";
        let files = published(&templates, key);
        let first = templates.lease("python", key).unwrap();
        let second = templates.lease("python", key).unwrap();
        templates.condemn("python", &first);
        // No new reader gets it; the ones reading it keep it.
        assert!(templates.lease("python", key).is_none());
        drop(first);
        assert!(files.dir.join("vm.migration").is_file());
        assert!(
            templates.get("python", key).is_none(),
            "a condemned template came back"
        );
        drop(second);
        assert!(!files.dir.exists(), "the corrupt template stayed");

        // A rebuild in its place is not removed by a reader of the old one.
        let reader = {
            published(&templates, key);
            let reader = templates.lease("python", key).unwrap();
            templates.condemn("python", &reader);
            reader
        };
        let rebuilt = published(&templates, key);
        drop(reader);
        assert!(
            rebuilt.dir.join("vm.migration").is_file(),
            "the rebuilt template was removed"
        );
        assert_eq!(
            templates.get("python", key).map(|f| f.dir),
            Some(rebuilt.dir)
        );
    }

    #[test]
    fn a_pack_given_up_is_neither_restored_nor_rebuilt_but_kept() {
        let root = tempfile::tempdir().unwrap();
        let templates = Templates::new(root.path().to_owned());
        let key = "00000000000000ab";
        let files = published(&templates, key);
        assert!(templates.lease("python", key).is_some());
        templates.restore_refused("python", "the CPU differs");
        assert!(templates.restores_given_up("python"));
        assert!(templates.lease("python", key).is_none());
        assert!(templates.get("python", key).is_none());
        assert!(!templates.claim_build("python"), "a rebuild was allowed");
        assert!(templates.claim_build("shell"), "another pack was given up");
        assert!(
            files.dir.join("vm.migration").is_file(),
            "an intact template was removed"
        );
        templates.restore_refused("python", "again");
        assert_eq!(templates.packs_given_up(), 1);
    }

    #[test]
    fn a_template_that_fails_the_quick_check_on_disk_is_not_used() {
        let root = tempfile::tempdir().unwrap();
        let key = "00000000000000dd";
        let files = published(&Templates::new(root.path().to_owned()), key);
        std::fs::write(files.dir.join("vm.migration"), b"truncated? no: longer").unwrap();
        let fresh = Templates::new(root.path().to_owned());
        assert!(fresh.get("python", key).is_none());
        assert!(fresh.lease("python", key).is_none());
        assert!(!files.dir.exists(), "the corrupt template stayed");
    }

    #[test]
    fn daemons_sharing_a_data_dir_keep_each_others_staging() {
        let root = tempfile::tempdir().unwrap();
        let one = Templates::new(root.path().to_owned());
        let two = Templates::new(root.path().to_owned());
        // One is writing a template (of either key) while two publishes.
        let same_key = one.staging_dir("python", "00000000000000ee").unwrap();
        let other_key = one.staging_dir("python", "00000000000000ff").unwrap();
        std::fs::write(same_key.dir.join("vm.migration"), b"half").unwrap();
        published(&two, "00000000000000ee");
        assert!(
            same_key.dir.join("vm.migration").is_file(),
            "staging of the same key removed"
        );
        assert!(other_key.dir.is_dir(), "staging of another key removed");
        assert_ne!(
            same_key.dir,
            two.staging_dir("python", "00000000000000ee").unwrap().dir
        );

        // A staging dir whose builder died (its lock file held by nobody)
        // is cleaned up by the next publish.
        let dead = root.path().join(".staging-python-00000000000000ff-1-dead");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(
            root.path()
                .join(".staging-python-00000000000000ff-1-dead.lock"),
            b"",
        )
        .unwrap();
        published(&two, "00000000000000ee");
        assert!(!dead.exists(), "an abandoned staging dir stayed");
        assert!(other_key.dir.is_dir(), "a live staging dir was removed");
    }
}
