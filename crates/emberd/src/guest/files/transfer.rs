//! Streamed transfers with the agent: downloads ([`Download`]) and uploads
//! ([`Upload`]) of files and tar archives.
//!
//! A download hands out the guest's chunks one at a time and never more bytes
//! than it was asked for. An upload passes chunks through a small bounded
//! queue to the request stream; abandoned, it ends that stream with a
//! message the agent refuses, so nothing partial stays in the guest.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use emberd_proto::boundary::{capability, MAX_MESSAGE_BYTES};
use emberd_proto::v1::{
    write_file_request, write_tar_request, FileChunk, PathRequest, ReadFileRequest,
    WriteFileRequest, WriteFileStart, WriteTarRequest, WriteTarStart,
};
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use super::{
    FilesError, UploadReply, UploadTarget, CHUNK_STALL_BOUND, FILE_CALL_BOUND, UPLOAD_FINISH_BOUND,
};
use crate::guest::{AgentClient, GuestError};

/// Largest data message sent to the agent.
pub const UPLOAD_CHUNK: usize = 256 * 1024;
const _: () = assert!(UPLOAD_CHUNK < MAX_MESSAGE_BYTES);
/// Upload chunks queued towards the agent before the sender waits.
const UPLOAD_QUEUE: usize = 4;

impl AgentClient {
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
            return Err(FilesError::unsupported_tar());
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
                    return Err(FilesError::unsupported_tar());
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
