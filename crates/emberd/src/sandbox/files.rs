//! File operations on a sandbox: stat, list, remove, and streamed
//! downloads and uploads of files and tar archives.
//!
//! Checks every path before the guest sees it ([`check_path`]), counts
//! every call as activity (a transfer for as long as its stream is open),
//! bounds every transfer by the operator's `max_transfer_bytes`, and ends a
//! call or a transfer when its sandbox is deleted or its VM ends. Knows no
//! HTTP: bytes come and go as chunks, errors as [`SandboxError`]s.

use std::future::Future;

use bytes::Bytes;
use emberd_proto::boundary::{MAX_LIST_DEPTH, MAX_PATH_BYTES};
use futures::stream::BoxStream;

use crate::guest::files::{
    Download, EntryKind, FileStat, FilesError, Listing, Upload, UploadReply, UploadTarget,
};
use crate::guest::{AgentClient, GuestError};

use super::error::{Interrupted, SandboxError};
use super::manager::Manager;
use super::record::{Sandbox, StreamActivity};

/// Symlinks followed to find what a download reads (Linux's `MAXSYMLINKS`).
const MAX_SYMLINK_HOPS: usize = 40;

/// A download's bytes, chunk by chunk; an error ends it early.
pub type FileStream = BoxStream<'static, Result<Bytes, SandboxError>>;

/// Refuses a guest path that is not absolute, holds a NUL byte or a `..`
/// component, or is longer than [`MAX_PATH_BYTES`].
pub fn check_path(path: &str) -> Result<(), SandboxError> {
    let bad = |why: &str| Err(SandboxError::BadPath(why.to_owned()));
    if path.is_empty() {
        return bad("a path is required (path=/absolute/path)");
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(SandboxError::BadPath(format!(
            "the path is {} bytes long; at most {MAX_PATH_BYTES} are allowed",
            path.len()
        )));
    }
    if path.contains('\0') {
        return bad("the path contains a NUL byte");
    }
    if !path.starts_with('/') {
        return bad("the path must be absolute (start with /)");
    }
    if path.split('/').any(|part| part == "..") {
        return bad("the path must not contain a \"..\" component");
    }
    Ok(())
}

/// Checks a listing's depth: 0 means 1, more than [`MAX_LIST_DEPTH`] is refused.
pub fn check_depth(depth: Option<u32>) -> Result<u32, SandboxError> {
    match depth.unwrap_or(1) {
        0 => Ok(1),
        depth if depth > MAX_LIST_DEPTH => Err(SandboxError::Invalid(format!(
            "depth must be at most {MAX_LIST_DEPTH}"
        ))),
        depth => Ok(depth),
    }
}

/// The guest's answer as the manager's error.
fn files_error(error: FilesError) -> SandboxError {
    match error {
        FilesError::NotFound(path) => SandboxError::NoSuchFile(path),
        FilesError::Conflict(message) => SandboxError::FileConflict(message),
        FilesError::NoSpace => SandboxError::NoSpace,
        FilesError::Invalid(message) => SandboxError::Invalid(message),
        FilesError::Unsupported {
            feature,
            capability,
        } => SandboxError::MissingCapability {
            feature,
            capability,
        },
        FilesError::OverLimit(limit) => SandboxError::TransferTooLarge {
            limit_mib: limit / (1024 * 1024),
        },
        // A shutdown deletes every sandbox: answer as the delete would.
        FilesError::Guest(GuestError::ShuttingDown { .. }) => {
            SandboxError::Deleted(Interrupted::Transfer)
        }
        other => SandboxError::Files(other),
    }
}

/// Runs `work` until it ends, the sandbox is deleted, or its VM ends.
async fn guarded<T>(
    sandbox: &Sandbox,
    work: impl Future<Output = Result<T, FilesError>>,
) -> Result<T, SandboxError> {
    tokio::select! {
        result = work => result.map_err(files_error),
        () = sandbox.deleted.cancelled() => Err(SandboxError::Deleted(Interrupted::Transfer)),
        () = sandbox.exited.cancelled() => Err(sandbox.exited_error()),
    }
}

/// `path`'s parent directory joined with a relative symlink target,
/// normalised lexically (the result is only ever asked of the guest).
fn follow(path: &str, target: &str) -> String {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        let mut parent: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        parent.pop();
        parent
    };
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The path `path` leads to (symlinks followed when asked) and its metadata.
async fn resolve(
    agent: &AgentClient,
    path: &str,
    follow_links: bool,
) -> Result<(String, FileStat), FilesError> {
    let mut current = path.to_owned();
    let mut stat = agent.stat(&current).await?;
    let mut hops = 0;
    while follow_links && stat.kind == EntryKind::Symlink {
        hops += 1;
        let (Some(target), true) = (&stat.link_target, hops <= MAX_SYMLINK_HOPS) else {
            return Err(FilesError::Conflict(format!(
                "{path} is a symlink that cannot be followed"
            )));
        };
        current = follow(&current, target);
        stat = agent.stat(&current).await?;
    }
    Ok((current, stat))
}

/// A call or transfer in progress: the activity it holds on its sandbox.
type Hold = StreamActivity;

impl Manager {
    /// The sandbox, its agent, and the activity guard of one file call.
    fn files_guest(&self, id: &str) -> Result<(Hold, AgentClient), SandboxError> {
        let sandbox = self.lookup(id)?;
        let guest = sandbox.guest()?;
        Ok((sandbox.begin_stream()?, guest.agent.clone()))
    }

    /// The largest transfer the operator allows, in bytes.
    pub fn max_transfer_bytes(&self) -> u64 {
        self.config().limits.max_transfer_bytes
    }

    fn transfer_too_large(&self) -> SandboxError {
        SandboxError::TransferTooLarge {
            limit_mib: self.max_transfer_bytes() / (1024 * 1024),
        }
    }

    /// Metadata of `path` in sandbox `id`; a symlink itself when
    /// `follow_links` is false, else what it leads to.
    pub async fn file_stat(
        &self,
        id: &str,
        path: &str,
        follow_links: bool,
    ) -> Result<FileStat, SandboxError> {
        check_path(path)?;
        let (hold, agent) = self.files_guest(id)?;
        let (_, stat) = guarded(hold.sandbox(), resolve(&agent, path, follow_links)).await?;
        Ok(stat)
    }

    /// The entries under the directory `path`, `depth` levels down.
    pub async fn file_list(
        &self,
        id: &str,
        path: &str,
        depth: Option<u32>,
    ) -> Result<Listing, SandboxError> {
        check_path(path)?;
        let depth = check_depth(depth)?;
        let (hold, agent) = self.files_guest(id)?;
        guarded(hold.sandbox(), agent.list(path, depth)).await
    }

    /// Removes `path`; a directory with entries only when `recursive`.
    pub async fn file_remove(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<(), SandboxError> {
        check_path(path)?;
        if path.split('/').all(str::is_empty) {
            return Err(SandboxError::BadPath(
                "refusing to remove the root directory".into(),
            ));
        }
        let (hold, agent) = self.files_guest(id)?;
        guarded(hold.sandbox(), agent.remove(path, recursive)).await
    }

    /// The regular file `path` (symlinks followed): its metadata, then its
    /// bytes as they were at stat (a file that grows meanwhile ends there).
    pub async fn file_download(
        &self,
        id: &str,
        path: &str,
    ) -> Result<(FileStat, FileStream), SandboxError> {
        check_path(path)?;
        let (hold, agent) = self.files_guest(id)?;
        let (resolved, stat) = guarded(hold.sandbox(), resolve(&agent, path, true)).await?;
        match stat.kind {
            EntryKind::File => {}
            EntryKind::Dir => {
                return Err(SandboxError::FileConflict(format!(
                    "{path} is a directory (ask with format=tar)"
                )))
            }
            EntryKind::Symlink | EntryKind::Other => {
                return Err(SandboxError::FileConflict(format!(
                    "{path} is not a regular file"
                )))
            }
        }
        if stat.size > self.max_transfer_bytes() {
            return Err(self.transfer_too_large());
        }
        let download = guarded(hold.sandbox(), agent.read_file(&resolved, stat.size)).await?;
        Ok((stat, stream(download, hold)))
    }

    /// `path` (a directory or a file) packed as a tar archive.
    pub async fn file_download_tar(
        &self,
        id: &str,
        path: &str,
    ) -> Result<FileStream, SandboxError> {
        check_path(path)?;
        let (hold, agent) = self.files_guest(id)?;
        let limit = self.max_transfer_bytes();
        let download = guarded(hold.sandbox(), agent.read_tar(path, limit)).await?;
        Ok(stream(download, hold))
    }

    /// Opens an upload to `target` in sandbox `id`. `declared` is the
    /// length the client announced, if any: one over the limit is refused
    /// before any guest work.
    pub async fn file_upload(
        &self,
        id: &str,
        target: UploadTarget,
        declared: Option<u64>,
    ) -> Result<FileUpload, SandboxError> {
        let path = match &target {
            UploadTarget::File { path, .. } | UploadTarget::Tar { path, .. } => path,
        };
        check_path(path)?;
        let (hold, agent) = self.files_guest(id)?;
        if declared.is_some_and(|len| len > self.max_transfer_bytes()) {
            return Err(self.transfer_too_large());
        }
        let upload = agent.upload(target).map_err(files_error)?;
        Ok(FileUpload {
            upload,
            hold,
            sent: 0,
            limit: self.max_transfer_bytes(),
        })
    }
}

/// A download as a stream that ends (with an error) when its sandbox is
/// deleted or its VM ends, and holds the sandbox active while open.
fn stream(download: Download, hold: Hold) -> FileStream {
    Box::pin(futures::stream::unfold(
        Some((download, hold)),
        |state| async move {
            let (mut download, hold) = state?;
            let next = guarded(hold.sandbox(), download.next()).await;
            match next {
                Ok(Some(data)) => Some((Ok(data), Some((download, hold)))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        },
    ))
}

/// An upload in progress; dropping it before [`FileUpload::finish`]
/// abandons it, and nothing of it stays in the guest.
pub struct FileUpload {
    upload: Upload,
    hold: Hold,
    sent: u64,
    limit: u64,
}

impl FileUpload {
    /// Passes `data` on; refuses it when the transfer would go over the limit.
    pub async fn send(&mut self, data: Bytes) -> Result<(), SandboxError> {
        self.sent = self.sent.saturating_add(data.len() as u64);
        if self.sent > self.limit {
            return Err(SandboxError::TransferTooLarge {
                limit_mib: self.limit / (1024 * 1024),
            });
        }
        guarded(self.hold.sandbox(), self.upload.send(data)).await
    }

    /// Resolves, with the error to answer, when the sandbox is deleted or
    /// its VM ends: a caller waiting for the client's next chunk stops then.
    pub async fn interrupted(&self) -> SandboxError {
        let sandbox = self.hold.sandbox();
        tokio::select! {
            () = sandbox.deleted.cancelled() => SandboxError::Deleted(Interrupted::Transfer),
            () = sandbox.exited.cancelled() => sandbox.exited_error(),
        }
    }

    /// Abandons the upload; returns once the guest has discarded it (or the
    /// sandbox is gone, or the agent's bound passed).
    pub async fn abandon(self) {
        let FileUpload { upload, hold, .. } = self;
        let _ = guarded(hold.sandbox(), async {
            upload.abandon().await;
            Ok(())
        })
        .await;
    }

    /// Ends the upload and waits for the guest to put it in place.
    pub async fn finish(self) -> Result<UploadReply, SandboxError> {
        guarded(self.hold.sandbox(), self.upload.finish()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_paths_are_refused_before_the_guest_sees_them() {
        for good in ["/", "/tmp/a", "/home/sandbox/x.txt", "/a/./b", "/a..b/c.."] {
            assert!(check_path(good).is_ok(), "{good:?} was refused");
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        for (bad, why) in [
            ("", "required"),
            ("relative/path", "absolute"),
            ("/a/../../etc/passwd", "\"..\""),
            ("/..", "\"..\""),
            ("/a/b/..", "\"..\""),
            ("/a\0b", "NUL"),
            (long.as_str(), "bytes long"),
        ] {
            match check_path(bad) {
                Err(SandboxError::BadPath(message)) => {
                    assert!(message.contains(why), "{bad:?}: {message}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert!(check_path(&format!("/{}", "a".repeat(MAX_PATH_BYTES - 1))).is_ok());
    }

    #[test]
    fn listing_depths_are_bounded() {
        assert_eq!(check_depth(None).unwrap(), 1);
        assert_eq!(check_depth(Some(0)).unwrap(), 1);
        assert_eq!(check_depth(Some(MAX_LIST_DEPTH)).unwrap(), MAX_LIST_DEPTH);
        assert!(matches!(
            check_depth(Some(MAX_LIST_DEPTH + 1)),
            Err(SandboxError::Invalid(_))
        ));
    }

    #[test]
    fn symlink_targets_resolve_against_the_links_directory() {
        assert_eq!(follow("/a/b/link", "target"), "/a/b/target");
        assert_eq!(follow("/a/b/link", "../c/./d"), "/a/c/d");
        assert_eq!(follow("/a/link", "/etc/hosts"), "/etc/hosts");
        assert_eq!(follow("/link", "../../x"), "/x");
    }

    #[test]
    fn guest_answers_become_the_managers_errors() {
        assert!(matches!(
            files_error(FilesError::NotFound("/x".into())),
            SandboxError::NoSuchFile(p) if p == "/x"
        ));
        assert!(matches!(
            files_error(FilesError::Conflict("not empty".into())),
            SandboxError::FileConflict(_)
        ));
        assert!(matches!(
            files_error(FilesError::NoSpace),
            SandboxError::NoSpace
        ));
        assert!(matches!(
            files_error(FilesError::Invalid("bad".into())),
            SandboxError::Invalid(_)
        ));
        assert!(matches!(
            files_error(FilesError::Unsupported {
                feature: "tar transfers",
                capability: "tar"
            }),
            SandboxError::MissingCapability {
                feature: "tar transfers",
                capability: "tar"
            }
        ));
        assert!(matches!(
            files_error(FilesError::OverLimit(3 * 1024 * 1024)),
            SandboxError::TransferTooLarge { limit_mib: 3 }
        ));
        assert!(matches!(
            files_error(FilesError::Guest(GuestError::ShuttingDown {
                call: "ReadFile"
            })),
            SandboxError::Deleted(Interrupted::Transfer)
        ));
        assert!(matches!(
            files_error(FilesError::Guest(GuestError::NoExit { call: "ReadFile" })),
            SandboxError::Files(_)
        ));
    }
}
