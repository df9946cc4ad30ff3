//! The daemon's end of the agent's `Files` service: stat, list, make a
//! directory, remove, and streamed reads and writes of files and tar
//! archives.
//!
//! Nothing here holds a file whole: a [`Download`] hands out the guest's
//! chunks one at a time (h2 flow control keeps the guest from running ahead
//! by more than the stream window), and an [`Upload`] passes chunks through
//! a small bounded queue to a `WriteFile`/`WriteTar` stream. Dropping an
//! upload before [`Upload::finish`] ends the stream with a message the agent
//! refuses, so it deletes its temporary file and nothing partial appears in
//! the guest (a tar's entries unpacked so far stay).
//!
//! Every call is bounded in time (per call, or per chunk for streams), every
//! string and list from the guest is bounded and cleaned, and a stream never
//! yields more bytes than it was asked for. Optional protocol features (tar,
//! owners, deep listings) are used only when the agent listed them in its
//! `Hello`; otherwise the call fails with [`FilesError::Unsupported`]. The
//! unary calls are here; the streamed ones and their handles in `transfer`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use emberd_proto::boundary::{capability, MAX_LIST_DEPTH, MAX_LIST_ENTRIES, MAX_MESSAGE_BYTES};
use emberd_proto::v1::files_client::FilesClient;
use emberd_proto::v1::{FileInfo, MakeDirRequest, PathRequest, RemoveRequest};
use tonic::transport::Channel;

pub use self::transfer::{Download, Upload, UPLOAD_CHUNK};
use super::{guest_text, AgentClient, GuestError};

mod transfer;

/// `Stat`, `ListDir`, `MakeDir`: metadata work, quick even under TCG.
pub const FILE_CALL_BOUND: Duration = Duration::from_secs(30);
/// `Remove`: a recursive delete of a large tree takes a while.
pub const REMOVE_BOUND: Duration = Duration::from_secs(120);
/// Longest wait for the guest to send the next chunk of a download, or to
/// take the next chunk of an upload.
pub const CHUNK_STALL_BOUND: Duration = Duration::from_secs(60);
/// Longest wait for the agent's answer once an upload's last chunk is sent
/// (it flushes and renames the file, or finishes unpacking).
pub const UPLOAD_FINISH_BOUND: Duration = Duration::from_secs(120);

/// Why a file operation in the guest failed.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("no such file: {0}")]
    NotFound(String),
    /// The guest refused for a reason about the file (is a directory, not a
    /// directory, not empty, not a regular file…): its cleaned message.
    #[error("{0}")]
    Conflict(String),
    #[error("no space left in the sandbox")]
    NoSpace,
    /// The guest found the request invalid: its cleaned message.
    #[error("{0}")]
    Invalid(String),
    #[error(
        "the guest image is too old: its agent lacks the {capability:?} capability for {feature}"
    )]
    Unsupported {
        feature: &'static str,
        capability: &'static str,
    },
    #[error("{path} ended after {got} of {expected} bytes (it shrank while being read)")]
    Short {
        path: String,
        got: u64,
        expected: u64,
    },
    #[error("the transfer is over the limit of {0} bytes")]
    OverLimit(u64),
    #[error(transparent)]
    Guest(#[from] GuestError),
}

impl FilesError {
    pub(super) fn unsupported_tar() -> Self {
        FilesError::Unsupported {
            feature: "tar transfers",
            capability: capability::TAR,
        }
    }

    /// The guest's status as a file error; `path` is the daemon's own copy
    /// of the path asked about.
    fn from_status(call: &'static str, path: &str, status: tonic::Status) -> Self {
        use tonic::Code;
        let message = guest_text(status.message());
        match status.code() {
            Code::NotFound => FilesError::NotFound(path.to_owned()),
            Code::FailedPrecondition | Code::AlreadyExists | Code::PermissionDenied => {
                FilesError::Conflict(message)
            }
            Code::ResourceExhausted => FilesError::NoSpace,
            Code::InvalidArgument => FilesError::Invalid(message),
            Code::Unimplemented => match call {
                "ReadTar" | "WriteTar" => FilesError::unsupported_tar(),
                // An agent from before the `Files` service.
                _ => FilesError::Unsupported {
                    feature: "the files API",
                    capability: "Files",
                },
            },
            code => FilesError::Guest(GuestError::Broken {
                call,
                source: tonic::Status::new(code, message),
            }),
        }
    }
}

/// What a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// A file's metadata as the guest reported it (strings bounded and cleaned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStat {
    pub path: String,
    pub name: String,
    pub kind: EntryKind,
    pub size: u64,
    /// Permission bits (at most 0o7777).
    pub mode: u32,
    pub modified: SystemTime,
    /// Where a symlink points.
    pub link_target: Option<String>,
}

impl FileStat {
    fn from_guest(info: FileInfo) -> Self {
        use emberd_proto::v1::FileKind as Wire;
        let kind = match Wire::try_from(info.kind) {
            Ok(Wire::File) => EntryKind::File,
            Ok(Wire::Dir) => EntryKind::Dir,
            Ok(Wire::Symlink) => EntryKind::Symlink,
            _ => EntryKind::Other,
        };
        let modified = u64::try_from(info.modified_unix_ms)
            .ok()
            .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
            .unwrap_or(UNIX_EPOCH);
        FileStat {
            path: guest_text(&info.path),
            name: guest_text(&info.name),
            kind,
            size: info.size,
            mode: info.mode & 0o7777,
            modified,
            link_target: (!info.link_target.is_empty()).then(|| guest_text(&info.link_target)),
        }
    }
}

/// A directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub entries: Vec<FileStat>,
    /// Entries were left out (the agent's bound or the daemon's).
    pub truncated: bool,
}

/// Who owns what an upload or `MakeDir` creates in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Owner {
    /// The unprivileged sandbox user.
    #[default]
    Sandbox,
    Root,
}

/// What to upload to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadTarget {
    /// One file at `path`, written to a temporary file and renamed.
    File {
        path: String,
        /// Permission bits; the agent's default (0644) when `None`.
        mode: Option<u32>,
        make_parents: bool,
        owner: Owner,
    },
    /// A tar stream unpacked under the directory `path` (made when missing).
    Tar { path: String, owner: Owner },
}

/// What the agent wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadReply {
    pub bytes: u64,
    /// Entries unpacked (tar uploads only).
    pub entries: Option<u64>,
}

impl AgentClient {
    fn files(&self) -> FilesClient<Channel> {
        FilesClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The owner string to send, when the agent understands owners. An
    /// agent without the capability creates everything as itself (root).
    fn owner_field(&self, owner: Owner) -> String {
        if !self.has_capability(capability::FILES_OWNER) {
            return String::new();
        }
        match owner {
            Owner::Sandbox => emberd_proto::boundary::SANDBOX_USER.to_owned(),
            Owner::Root => emberd_proto::boundary::ROOT_USER.to_owned(),
        }
    }

    /// Metadata of `path` (a symlink itself, not its target).
    pub async fn stat(&self, path: &str) -> Result<FileStat, FilesError> {
        let request = PathRequest {
            path: path.to_owned(),
            depth: 0,
        };
        let mut files = self.files();
        let reply = self
            .bounded("Stat", Some(FILE_CALL_BOUND), files.stat(request))
            .await?
            .map_err(|s| FilesError::from_status("Stat", path, s))?;
        Ok(FileStat::from_guest(reply.into_inner()))
    }

    /// The entries under the directory `path`, `depth` levels down (1: its
    /// own entries), at most [`MAX_LIST_ENTRIES`].
    pub async fn list(&self, path: &str, depth: u32) -> Result<Listing, FilesError> {
        if depth > 1 && !self.has_capability(capability::FILES_OWNER) {
            return Err(FilesError::Unsupported {
                feature: "listings deeper than one level",
                capability: capability::FILES_OWNER,
            });
        }
        let request = PathRequest {
            path: path.to_owned(),
            depth: depth.min(MAX_LIST_DEPTH),
        };
        let mut files = self.files();
        let reply = self
            .bounded("ListDir", Some(FILE_CALL_BOUND), files.list_dir(request))
            .await?
            .map_err(|s| FilesError::from_status("ListDir", path, s))?
            .into_inner();
        let truncated = reply.truncated || reply.entries.len() > MAX_LIST_ENTRIES;
        let entries = reply
            .entries
            .into_iter()
            .take(MAX_LIST_ENTRIES)
            .map(FileStat::from_guest)
            .collect();
        Ok(Listing { entries, truncated })
    }

    /// Makes the directory `path` (and its parents when asked).
    pub async fn make_dir(
        &self,
        path: &str,
        parents: bool,
        mode: Option<u32>,
        owner: Owner,
    ) -> Result<(), FilesError> {
        let request = MakeDirRequest {
            path: path.to_owned(),
            parents,
            mode: mode.unwrap_or(0) & 0o7777,
            owner: self.owner_field(owner),
        };
        let mut files = self.files();
        self.bounded("MakeDir", Some(FILE_CALL_BOUND), files.make_dir(request))
            .await?
            .map_err(|s| FilesError::from_status("MakeDir", path, s))?;
        Ok(())
    }

    /// Removes `path`; a directory with entries only when `recursive`.
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<(), FilesError> {
        let request = RemoveRequest {
            path: path.to_owned(),
            recursive,
        };
        let mut files = self.files();
        self.bounded("Remove", Some(REMOVE_BOUND), files.remove(request))
            .await?
            .map_err(|s| FilesError::from_status("Remove", path, s))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_statuses_become_file_errors() {
        let status = |code, message: &str| tonic::Status::new(code, message);
        use tonic::Code;
        assert!(matches!(
            FilesError::from_status("Stat", "/x", status(Code::NotFound, "gone")),
            FilesError::NotFound(p) if p == "/x"
        ));
        assert!(matches!(
            FilesError::from_status("Remove", "/d", status(Code::FailedPrecondition, "not empty\u{1b}[2J")),
            FilesError::Conflict(m) if m.starts_with("not empty") && !m.contains('\u{1b}')
        ));
        assert!(matches!(
            FilesError::from_status("WriteFile", "/f", status(Code::ResourceExhausted, "ENOSPC")),
            FilesError::NoSpace
        ));
        assert!(matches!(
            FilesError::from_status("WriteFile", "/f", status(Code::InvalidArgument, "bad")),
            FilesError::Invalid(_)
        ));
        assert!(matches!(
            FilesError::from_status("ReadTar", "/f", status(Code::Unimplemented, "no")),
            FilesError::Unsupported {
                feature: "tar transfers",
                capability: "tar"
            }
        ));
        let long = "x".repeat(1 << 20);
        let broken = FilesError::from_status("ReadFile", "/f", status(Code::Internal, &long));
        let FilesError::Guest(GuestError::Broken { source, .. }) = &broken else {
            panic!("{broken:?}")
        };
        assert!(source.message().len() <= super::super::GUEST_TEXT_MAX_BYTES);
    }

    #[test]
    fn guest_metadata_is_bounded_and_cleaned() {
        let info = FileInfo {
            path: format!("/tmp/\u{1b}{}", "a".repeat(10_000)),
            name: "n\u{7}".into(),
            kind: 2,
            size: 5,
            mode: 0o170_755,
            modified_unix_ms: -5,
            link_target: String::new(),
        };
        let stat = FileStat::from_guest(info);
        assert!(stat.path.len() <= super::super::GUEST_TEXT_MAX_BYTES);
        assert!(!stat.path.contains('\u{1b}') && !stat.name.contains('\u{7}'));
        assert_eq!(stat.kind, EntryKind::Dir);
        assert_eq!(stat.mode, 0o755);
        assert_eq!(stat.modified, UNIX_EPOCH);
        assert_eq!(stat.link_target, None);
        let odd = FileStat::from_guest(FileInfo {
            kind: 99,
            ..FileInfo::default()
        });
        assert_eq!(odd.kind, EntryKind::Other);
    }
}
