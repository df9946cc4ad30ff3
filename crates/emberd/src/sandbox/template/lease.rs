//! One published template and the restores reading it: a restore holds a
//! [`Lease`] for as long as it reads the files, and a condemned (corrupt)
//! template is removed by whoever lets go of it last. Knows nothing of
//! where templates are kept; the store decides what to condemn.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::integrity::{self, IntegrityError};
use crate::vmm::SnapshotFiles;

/// A full check that passed is trusted this long: restores that keep
/// failing on an intact template (a VMM refusing it) do not hash it each time.
const TRUSTED_FOR: Duration = Duration::from_secs(60);

/// One published template and who reads it.
#[derive(Debug)]
pub(super) struct Entry {
    pub files: SnapshotFiles,
    key: String,
    state: Mutex<Readers>,
    /// When the full check last passed; held while a check runs, so that
    /// restores failing together share one.
    verified: tokio::sync::Mutex<Option<Instant>>,
}

#[derive(Debug, Default)]
struct Readers {
    count: usize,
    /// Failed its integrity check: removed when the last reader leaves.
    condemned: bool,
}

impl Entry {
    pub fn new(dir: PathBuf, key: &str) -> Arc<Self> {
        Arc::new(Entry {
            files: SnapshotFiles { dir },
            key: key.to_owned(),
            state: Mutex::new(Readers::default()),
            verified: tokio::sync::Mutex::new(None),
        })
    }

    /// A hold on the template; `None` once it was condemned.
    pub fn lease(self: &Arc<Self>) -> Option<Lease> {
        let mut state = self.state.lock();
        if state.condemned {
            return None;
        }
        state.count += 1;
        Some(Lease {
            entry: self.clone(),
        })
    }

    /// A new template took this one's place: its last reader must not
    /// remove the directory any more.
    pub fn supersede(&self) {
        self.state.lock().condemned = false;
    }

    fn remove_if_unread(&self, state: &Readers) {
        if state.condemned && state.count == 0 {
            tracing::warn!(template = %self.files.dir.display(), "removing a corrupt template");
            let _ = std::fs::remove_dir_all(&self.files.dir);
        }
    }
}

/// A restore's hold on a template: while any lease is alive the template
/// is not removed, even if found corrupt.
#[derive(Debug)]
pub(in crate::sandbox) struct Lease {
    entry: Arc<Entry>,
}

impl Lease {
    pub(in crate::sandbox) fn files(&self) -> &SnapshotFiles {
        &self.entry.files
    }

    pub(super) fn is_of(&self, entry: &Arc<Entry>) -> bool {
        Arc::ptr_eq(&self.entry, entry)
    }

    /// Marks the template corrupt (removed when the last lease goes) and
    /// returns it.
    pub(super) fn condemn(&self) -> Arc<Entry> {
        self.entry.state.lock().condemned = true;
        self.entry.clone()
    }

    /// The full integrity check of the leased template (hashes every byte,
    /// on a blocking thread), unless one passed within [`TRUSTED_FOR`].
    pub(in crate::sandbox) async fn verify(&self) -> Result<(), IntegrityError> {
        let mut verified = self.entry.verified.lock().await;
        if verified.is_some_and(|at| at.elapsed() < TRUSTED_FOR) {
            return Ok(());
        }
        let dir = self.entry.files.dir.clone();
        let key = self.entry.key.clone();
        let result = tokio::task::spawn_blocking(move || integrity::check_full(&dir, &key))
            .await
            .unwrap_or_else(|e| Err(IntegrityError::Io(std::io::Error::other(e))));
        *verified = result.is_ok().then(Instant::now);
        result
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut state = self.entry.state.lock();
        state.count -= 1;
        self.entry.remove_if_unread(&state);
    }
}
