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
//! `Hello`; otherwise the call fails with [`FilesError::Unsupported`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use emberd_proto::boundary::{capability, MAX_LIST_DEPTH, MAX_LIST_ENTRIES, MAX_MESSAGE_BYTES};
use emberd_proto::v1::files_client::FilesClient;
use emberd_proto::v1::{
    write_file_request, write_tar_request, FileChunk, FileInfo, MakeDirRequest, PathRequest,
    ReadFileRequest, RemoveRequest, WriteFileRequest, WriteFileStart, WriteTarRequest,
    WriteTarStart,
};
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::{guest_text, AgentClient, GuestError};

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
/// Largest data message sent to the agent.
pub const UPLOAD_CHUNK: usize = 256 * 1024;
const _: () = assert!(UPLOAD_CHUNK < MAX_MESSAGE_BYTES);
/// Upload chunks queued towards the agent before the sender waits.
const UPLOAD_QUEUE: usize = 4;

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
    #[error("the guest image is too old: its agent does not offer {0}")]
    Unsupported(&'static str),
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
            Code::Unimplemented => FilesError::Unsupported(match call {
                "ReadTar" | "WriteTar" => "tar transfers",
                _ => "the files API",
            }),
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
            return Err(FilesError::Unsupported("listings deeper than one level"));
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

    /// Streams exactly `size` bytes of the regular file `path` (its size at
    /// stat): a file that grows meanwhile ends at `size`, one that shrinks
    /// ends with [`FilesError::Short`].
    pub async fn read_file(&self, path: &str, size: u64) -> Result<Download, FilesError> {
        if size == 0 {
            // A limit of 0 means "to the end" to the agent: ask nothing.
            return Ok(Download::empty(path));
        }
        let request = ReadFileRequest {
            path: path.to_owned(),
            offset: 0,
            limit: size,
        };
        let mut files = self.files();
        let chunks = self
            .bounded("ReadFile", Some(FILE_CALL_BOUND), files.read_file(request))
            .await?
            .map_err(|s| FilesError::from_status("ReadFile", path, s))?
            .into_inner();
        Ok(Download::new(
            self,
            "ReadFile",
            path,
            chunks,
            Cap::Exact(size),
        ))
    }

    /// Streams `path` (a directory or a file) packed as a tar archive, at
    /// most `limit` bytes of it (more ends with [`FilesError::OverLimit`]).
    pub async fn read_tar(&self, path: &str, limit: u64) -> Result<Download, FilesError> {
        if !self.has_capability(capability::TAR) {
            return Err(FilesError::Unsupported("tar transfers"));
        }
        let request = PathRequest {
            path: path.to_owned(),
            depth: 0,
        };
        let mut files = self.files();
        let chunks = self
            .bounded("ReadTar", Some(FILE_CALL_BOUND), files.read_tar(request))
            .await?
            .map_err(|s| FilesError::from_status("ReadTar", path, s))?
            .into_inner();
        Ok(Download::new(
            self,
            "ReadTar",
            path,
            chunks,
            Cap::AtMost(limit),
        ))
    }

    /// Opens an upload to `target`. Send its bytes with [`Upload::send`],
    /// then [`Upload::finish`]; dropping it before leaves nothing behind.
    pub fn upload(&self, target: UploadTarget) -> Result<Upload, FilesError> {
        let (tx, rx) = mpsc::channel::<Bytes>(UPLOAD_QUEUE);
        let data = ReceiverStream::new(rx);
        let finished = Arc::new(AtomicBool::new(false));
        let client = self.clone();
        let (call, path): (&'static str, String) = match &target {
            UploadTarget::File { path, .. } => ("WriteFile", path.clone()),
            UploadTarget::Tar { path, .. } => ("WriteTar", path.clone()),
        };
        let task = match target {
            UploadTarget::File {
                path,
                mode,
                make_parents,
                owner,
            } => {
                let start = WriteFileRequest {
                    kind: Some(write_file_request::Kind::Start(WriteFileStart {
                        path: path.clone(),
                        mode: mode.unwrap_or(0) & 0o7777,
                        make_parents,
                        owner: self.owner_field(owner),
                    })),
                };
                let abort = start.clone();
                let requests = futures::stream::once(async { start })
                    .chain(data.map(|chunk| WriteFileRequest {
                        kind: Some(write_file_request::Kind::Data(chunk.to_vec())),
                    }))
                    .chain(abort_marker(finished.clone(), abort));
                tokio::spawn(async move {
                    let mut files = client.files();
                    let reply = client
                        .bounded(call, None, files.write_file(requests))
                        .await?
                        .map_err(|s| FilesError::from_status(call, &path, s))?
                        .into_inner();
                    Ok(UploadReply {
                        bytes: reply.bytes_written,
                        entries: None,
                    })
                })
            }
            UploadTarget::Tar { path, owner } => {
                if !self.has_capability(capability::TAR) {
                    return Err(FilesError::Unsupported("tar transfers"));
                }
                let start = WriteTarRequest {
                    kind: Some(write_tar_request::Kind::Start(WriteTarStart {
                        path: path.clone(),
                        owner: self.owner_field(owner),
                    })),
                };
                let abort = start.clone();
                let requests = futures::stream::once(async { start })
                    .chain(data.map(|chunk| WriteTarRequest {
                        kind: Some(write_tar_request::Kind::Data(chunk.to_vec())),
                    }))
                    .chain(abort_marker(finished.clone(), abort));
                tokio::spawn(async move {
                    let mut files = client.files();
                    let reply = client
                        .bounded(call, None, files.write_tar(requests))
                        .await?
                        .map_err(|s| FilesError::from_status(call, &path, s))?
                        .into_inner();
                    Ok(UploadReply {
                        bytes: reply.bytes_written,
                        entries: Some(reply.entries),
                    })
                })
            }
        };
        Ok(Upload {
            complete: finished,
            tx: Some(tx),
            call: CallTask(task, false),
            finished: None,
            name: call,
            path,
        })
    }
}

/// What follows an upload's data: nothing when it was finished; else a
/// second `start`, which the agent refuses (only data may follow `start`),
/// discarding what it wrote. Cancelling the call instead is no abort: the
/// agent's HTTP/2 server reads a stream reset with `CANCEL` as the clean end
/// of the request, and would put a truncated file in place.
fn abort_marker<T: Send + 'static>(
    finished: Arc<AtomicBool>,
    marker: T,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::once(async move { (!finished.load(Ordering::SeqCst)).then_some(marker) })
        .filter_map(std::future::ready)
}

/// The task running an upload's call. The flag is set once the task was
/// awaited to its end (it must not be polled again). Dropped early, the task
/// is left to deliver the abort marker and hear the agent's refusal, and is
/// aborted only after [`UPLOAD_FINISH_BOUND`] (an agent that stopped
/// answering).
struct CallTask(JoinHandle<Result<UploadReply, FilesError>>, bool);

impl Drop for CallTask {
    fn drop(&mut self) {
        if self.0.is_finished() {
            return;
        }
        let task = self.0.abort_handle();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    tokio::time::sleep(UPLOAD_FINISH_BOUND).await;
                    task.abort();
                });
            }
            Err(_) => task.abort(),
        }
    }
}

/// An upload in progress. Dropping it before [`Upload::finish`] abandons
/// it: the agent removes its temporary file.
pub struct Upload {
    /// Set by [`Upload::finish`]: the data ended as the client meant it to.
    complete: Arc<AtomicBool>,
    tx: Option<mpsc::Sender<Bytes>>,
    call: CallTask,
    /// The call's result once it ended (the task is not polled again).
    finished: Option<Result<UploadReply, FilesError>>,
    name: &'static str,
    path: String,
}

impl Upload {
    /// Passes `data` on to the agent in protocol-sized pieces, waiting (at
    /// most [`CHUNK_STALL_BOUND`] a piece) while the agent is behind. An
    /// agent that ended the call early (a full disk, say) gives its error.
    pub async fn send(&mut self, data: Bytes) -> Result<(), FilesError> {
        let mut rest = data;
        while !rest.is_empty() {
            let Some(tx) = self.tx.as_ref() else {
                return Err(self.ended_early().await);
            };
            let piece = rest.split_to(rest.len().min(UPLOAD_CHUNK));
            let task = &mut self.call.0;
            if self.call.1 {
                return Err(self.ended_early().await);
            }
            let sent = tokio::select! {
                sent = tokio::time::timeout(CHUNK_STALL_BOUND, tx.send(piece)) => sent,
                // The agent answered before the end: an error, told below.
                joined = task => {
                    self.call.1 = true;
                    self.finished = Some(joined_result(self.name, joined));
                    Ok(Err(mpsc::error::SendError(Bytes::new())))
                }
            };
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    self.tx = None;
                    return Err(self.ended_early().await);
                }
                Err(_) => {
                    return Err(FilesError::Guest(GuestError::Timeout {
                        call: self.name,
                        bound: CHUNK_STALL_BOUND,
                    }))
                }
            }
        }
        Ok(())
    }

    /// Ends the data and waits (at most [`UPLOAD_FINISH_BOUND`]) for the
    /// agent to put the file in place.
    pub async fn finish(mut self) -> Result<UploadReply, FilesError> {
        self.complete.store(true, Ordering::SeqCst);
        self.tx = None;
        self.outcome(UPLOAD_FINISH_BOUND).await
    }

    /// Abandons the upload and waits (at most [`FILE_CALL_BOUND`]) until the
    /// agent has discarded what it wrote.
    pub async fn abandon(mut self) {
        self.tx = None;
        let _ = self.outcome(FILE_CALL_BOUND).await;
    }

    /// The error of a call that stopped taking data before its end.
    async fn ended_early(&mut self) -> FilesError {
        match self.outcome(FILE_CALL_BOUND).await {
            Err(e) => e,
            Ok(_) => FilesError::Guest(GuestError::Refused {
                call: self.name,
                message: format!("the agent finished {} before its data ended", self.path),
            }),
        }
    }

    async fn outcome(&mut self, bound: Duration) -> Result<UploadReply, FilesError> {
        if let Some(result) = self.finished.take() {
            return result;
        }
        if self.call.1 {
            return Err(FilesError::Guest(GuestError::NoExit { call: self.name }));
        }
        self.call.1 = true;
        match tokio::time::timeout(bound, &mut self.call.0).await {
            Ok(joined) => joined_result(self.name, joined),
            Err(_) => Err(FilesError::Guest(GuestError::Timeout {
                call: self.name,
                bound,
            })),
        }
    }
}

fn joined_result(
    call: &'static str,
    joined: Result<Result<UploadReply, FilesError>, tokio::task::JoinError>,
) -> Result<UploadReply, FilesError> {
    joined.unwrap_or_else(|join| {
        Err(FilesError::Guest(GuestError::Refused {
            call,
            message: format!("the upload task ended: {join}"),
        }))
    })
}

/// How many bytes a download may carry.
#[derive(Debug, Clone, Copy)]
enum Cap {
    /// Exactly this many: more are cut off, fewer are an error.
    Exact(u64),
    /// At most this many: more is an error.
    AtMost(u64),
}

/// A file or tar stream from the guest, chunk by chunk.
pub struct Download {
    chunks: Option<tonic::Streaming<FileChunk>>,
    client: Option<AgentClient>,
    call: &'static str,
    path: String,
    cap: Cap,
    received: u64,
    done: bool,
}

impl Download {
    fn new(
        client: &AgentClient,
        call: &'static str,
        path: &str,
        chunks: tonic::Streaming<FileChunk>,
        cap: Cap,
    ) -> Self {
        Download {
            chunks: Some(chunks),
            client: Some(client.clone()),
            call,
            path: path.to_owned(),
            cap,
            received: 0,
            done: false,
        }
    }

    fn empty(path: &str) -> Self {
        Download {
            chunks: None,
            client: None,
            call: "ReadFile",
            path: path.to_owned(),
            cap: Cap::Exact(0),
            received: 0,
            done: true,
        }
    }

    /// The next chunk, `None` at the end. The guest gets
    /// [`CHUNK_STALL_BOUND`] to send each one.
    pub async fn next(&mut self) -> Result<Option<Bytes>, FilesError> {
        loop {
            let (false, Some(chunks), Some(client)) =
                (self.done, self.chunks.as_mut(), self.client.as_ref())
            else {
                return Ok(None);
            };
            let message = client
                .bounded(self.call, Some(CHUNK_STALL_BOUND), chunks.message())
                .await;
            let message = match message {
                Ok(Ok(message)) => message,
                Ok(Err(status)) => {
                    self.done = true;
                    return Err(FilesError::from_status(self.call, &self.path, status));
                }
                Err(e) => {
                    self.done = true;
                    return Err(e.into());
                }
            };
            let Some(FileChunk { data }) = message else {
                self.done = true;
                return match self.cap {
                    Cap::Exact(expected) if self.received < expected => Err(FilesError::Short {
                        path: self.path.clone(),
                        got: self.received,
                        expected,
                    }),
                    _ => Ok(None),
                };
            };
            if data.is_empty() {
                continue;
            }
            let mut data = Bytes::from(data);
            let total = self.received + data.len() as u64;
            match self.cap {
                Cap::Exact(expected) if total >= expected => {
                    // Enough: whatever the file grew by is left out.
                    data.truncate(usize::try_from(expected - self.received).unwrap_or(0));
                    self.done = true;
                    self.chunks = None;
                }
                Cap::AtMost(limit) if total > limit => {
                    self.done = true;
                    self.chunks = None;
                    return Err(FilesError::OverLimit(limit));
                }
                _ => {}
            }
            self.received += data.len() as u64;
            return Ok(Some(data));
        }
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
            FilesError::Unsupported("tar transfers")
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
