//! The `Files` service: read, write, stat, list, mkdir, remove, tar.
//!
//! Paths are absolute guest paths without `..` components or NUL bytes, at
//! most `MAX_PATH_BYTES`; in host mode they are resolved under the served
//! root. Reads and writes are streamed in chunks, never held whole; a write
//! goes to a temporary file beside the target and is renamed into place.
//! Only regular files are read (a device or fifo could stream forever).
//! `Stat` and listings never follow a final symlink. What is created goes
//! to the request's owner ([`owner`]).

mod listing;
mod owner;
mod tar_in;
mod tar_out;

use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use emberd_proto::boundary::{MAX_LIST_DEPTH, MAX_PATH_BYTES};
use emberd_proto::v1::files_server::Files;
use emberd_proto::v1::{
    write_file_request, write_tar_request, FileChunk, FileInfo, FileKind, ListDirResponse,
    MakeDirRequest, MakeDirResponse, PathRequest, ReadFileRequest, RemoveRequest, RemoveResponse,
    WriteFileRequest, WriteFileResponse, WriteTarRequest, WriteTarResponse,
};
use futures::Stream;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

const CHUNK: usize = 64 * 1024;
/// What a full disk is called in errors: the host shows it to the caller.
const NO_SPACE: &str = "no space left in the sandbox";
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// The `Files` service over one root.
#[derive(Debug, Clone)]
pub struct FilesService {
    /// `/` in the guest; the served directory in host mode.
    root: PathBuf,
    /// Whether created files go to their requested owner (the guest, where
    /// the agent is root); a host process leaves them its own.
    chown: bool,
}

impl FilesService {
    pub fn new(root: PathBuf, chown: bool) -> Self {
        FilesService { root, chown }
    }

    /// `rel` of a resolved path: its part under the root.
    fn relative<'a>(&self, path: &'a Path) -> &'a Path {
        path.strip_prefix(&self.root).unwrap_or(path)
    }

    /// Maps a guest path to a host path, refusing hostile ones.
    fn resolve(&self, path: &str) -> Result<PathBuf, Status> {
        if path.len() > MAX_PATH_BYTES {
            return Err(Status::invalid_argument(format!(
                "path is longer than {MAX_PATH_BYTES} bytes"
            )));
        }
        if path.contains('\0') {
            return Err(Status::invalid_argument("path contains a NUL byte"));
        }
        let guest = Path::new(path);
        if !guest.is_absolute() {
            return Err(Status::invalid_argument(format!(
                "path {path:?} is not absolute"
            )));
        }
        let mut resolved = self.root.clone();
        for component in guest.components() {
            match component {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(part) => resolved.push(part),
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(Status::invalid_argument(format!(
                        "path {path:?} contains \"..\""
                    )))
                }
            }
        }
        Ok(resolved)
    }
}

/// Whether `error` (or an error it wraps) is a full disk or quota.
fn is_no_space(error: &std::io::Error) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
                || matches!(io.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded)
            {
                return true;
            }
            current = io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static));
        } else {
            current = e.source();
        }
    }
    false
}

fn io_status(what: &str, path: &str, error: std::io::Error) -> Status {
    if is_no_space(&error) {
        return Status::resource_exhausted(format!("{NO_SPACE}: {what} {path}"));
    }
    let message = format!("{what} {path}: {error}");
    match error.kind() {
        ErrorKind::NotFound => Status::not_found(message),
        ErrorKind::AlreadyExists => Status::already_exists(message),
        ErrorKind::PermissionDenied => Status::permission_denied(message),
        ErrorKind::InvalidInput | ErrorKind::InvalidData => Status::invalid_argument(message),
        _ => match error.raw_os_error() {
            Some(libc::ENOTDIR) | Some(libc::EISDIR) | Some(libc::ENOTEMPTY) => {
                Status::failed_precondition(message)
            }
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Status::resource_exhausted(message),
            _ => Status::internal(message),
        },
    }
}

/// What `Stat` and `ListDir` say of the (not followed) entry at `host`.
fn file_info(guest_path: &str, meta: &std::fs::Metadata, host: &Path) -> FileInfo {
    let link_target = if meta.file_type().is_symlink() {
        std::fs::read_link(host)
            .map(|t| t.to_string_lossy().chars().take(MAX_PATH_BYTES).collect())
            .unwrap_or_default()
    } else {
        String::new()
    };
    let kind = if meta.file_type().is_symlink() {
        FileKind::Symlink
    } else if meta.is_dir() {
        FileKind::Dir
    } else if meta.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    };
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    FileInfo {
        path: guest_path.to_owned(),
        name: Path::new(guest_path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into()),
        kind: kind as i32,
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        modified_unix_ms: modified,
        link_target,
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<FileChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Files for FilesService {
    type ReadFileStream = ChunkStream;
    type ReadTarStream = ChunkStream;

    async fn write_tar(
        &self,
        request: Request<Streaming<WriteTarRequest>>,
    ) -> Result<Response<WriteTarResponse>, Status> {
        let mut stream = request.into_inner();
        let start = match stream.message().await? {
            Some(WriteTarRequest {
                kind: Some(write_tar_request::Kind::Start(start)),
            }) => start,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be `start`",
                ))
            }
        };
        let ids = owner::parse(&start.owner, self.chown)?;
        let dir = self.resolve(&start.path)?;
        let response = tar_in::write_tar(stream, self.root.clone(), dir, start.path, ids).await?;
        Ok(Response::new(response))
    }

    async fn read_tar(
        &self,
        request: Request<PathRequest>,
    ) -> Result<Response<Self::ReadTarStream>, Status> {
        let request = request.into_inner();
        let path = self.resolve(&request.path)?;
        let meta = tokio::fs::symlink_metadata(&path)
            .await
            .map_err(|e| io_status("cannot pack", &request.path, e))?;
        let rx = tar_out::read_tar(path, request.path, &meta);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn read_file(
        &self,
        request: Request<ReadFileRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let request = request.into_inner();
        let path = self.resolve(&request.path)?;
        let regular = |meta: &std::fs::Metadata| {
            if meta.is_dir() {
                Err(Status::failed_precondition(format!(
                    "{} is a directory",
                    request.path
                )))
            } else if !meta.is_file() {
                Err(Status::failed_precondition(format!(
                    "{} is not a regular file",
                    request.path
                )))
            } else {
                Ok(())
            }
        };
        // Checked before opening (opening a fifo waits for a writer, a
        // device may act on open) and again on what was opened.
        regular(
            &tokio::fs::metadata(&path)
                .await
                .map_err(|e| io_status("cannot stat", &request.path, e))?,
        )?;
        let mut file = tokio::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&path)
            .await
            .map_err(|e| io_status("cannot open", &request.path, e))?;
        let meta = file
            .metadata()
            .await
            .map_err(|e| io_status("cannot stat", &request.path, e))?;
        regular(&meta)?;
        if request.offset > 0 {
            file.seek(std::io::SeekFrom::Start(request.offset))
                .await
                .map_err(|e| io_status("cannot seek in", &request.path, e))?;
        }
        let mut remaining = if request.limit == 0 {
            u64::MAX
        } else {
            request.limit
        };
        let (tx, rx) = mpsc::channel(4);
        let guest_path = request.path.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            while remaining > 0 {
                let want = usize::try_from(remaining.min(CHUNK as u64)).unwrap_or(CHUNK);
                match file.read(&mut buf[..want]).await {
                    Ok(0) => return,
                    Ok(n) => {
                        remaining -= n as u64;
                        if tx
                            .send(Ok(FileChunk {
                                data: buf[..n].to_vec(),
                            }))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(io_status("cannot read", &guest_path, e))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn write_file(
        &self,
        request: Request<Streaming<WriteFileRequest>>,
    ) -> Result<Response<WriteFileResponse>, Status> {
        let mut stream = request.into_inner();
        let start = match stream.message().await? {
            Some(WriteFileRequest {
                kind: Some(write_file_request::Kind::Start(start)),
            }) => start,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be `start`",
                ))
            }
        };
        let ids = owner::parse(&start.owner, self.chown)?;
        let target = self.resolve(&start.path)?;
        let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
            return Err(Status::invalid_argument(
                "cannot write to the root directory",
            ));
        };
        if start.make_parents {
            let (root, rel) = (self.root.clone(), self.relative(dir).to_owned());
            tokio::task::spawn_blocking(move || owner::make_dirs(&root, &rel, 0o755, ids, true))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| io_status("cannot create the parents of", &start.path, e))?;
        }
        let temp = dir.join(format!(
            ".{}.emberd-{}-{}",
            name.to_string_lossy(),
            std::process::id(),
            NEXT_TEMP.fetch_add(1, Ordering::Relaxed)
        ));
        let mode = if start.mode == 0 {
            0o644
        } else {
            start.mode & 0o7777
        };
        let result = async {
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&temp)
                .await
                .map_err(|e| io_status("cannot create", &start.path, e))?;
            if let Some((uid, gid)) = ids {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                    .map_err(|e| io_status("cannot give away", &start.path, e))?;
            }
            let mut written: u64 = 0;
            while let Some(message) = stream.message().await? {
                match message.kind {
                    Some(write_file_request::Kind::Data(data)) => {
                        file.write_all(&data)
                            .await
                            .map_err(|e| io_status("cannot write", &start.path, e))?;
                        written += data.len() as u64;
                    }
                    _ => return Err(Status::invalid_argument("only data may follow `start`")),
                }
            }
            file.flush()
                .await
                .map_err(|e| io_status("cannot write", &start.path, e))?;
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .await
                .map_err(|e| io_status("cannot set the mode of", &start.path, e))?;
            drop(file);
            tokio::fs::rename(&temp, &target)
                .await
                .map_err(|e| io_status("cannot replace", &start.path, e))?;
            Ok(written)
        }
        .await;
        match result {
            Ok(bytes_written) => Ok(Response::new(WriteFileResponse { bytes_written })),
            Err(status) => {
                let _ = tokio::fs::remove_file(&temp).await;
                Err(status)
            }
        }
    }

    async fn stat(&self, request: Request<PathRequest>) -> Result<Response<FileInfo>, Status> {
        let request = request.into_inner();
        let path = self.resolve(&request.path)?;
        let meta = tokio::fs::symlink_metadata(&path)
            .await
            .map_err(|e| io_status("cannot stat", &request.path, e))?;
        Ok(Response::new(file_info(&request.path, &meta, &path)))
    }

    async fn list_dir(
        &self,
        request: Request<PathRequest>,
    ) -> Result<Response<ListDirResponse>, Status> {
        let request = request.into_inner();
        if request.depth > MAX_LIST_DEPTH {
            return Err(Status::invalid_argument(format!(
                "depth {} is more than {MAX_LIST_DEPTH}",
                request.depth
            )));
        }
        let path = self.resolve(&request.path)?;
        let guest = request.path.clone();
        let (entries, truncated) =
            tokio::task::spawn_blocking(move || listing::list(&path, &guest, request.depth))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| io_status("cannot list", &request.path, e))?;
        Ok(Response::new(ListDirResponse { entries, truncated }))
    }

    async fn make_dir(
        &self,
        request: Request<MakeDirRequest>,
    ) -> Result<Response<MakeDirResponse>, Status> {
        let request = request.into_inner();
        let ids = owner::parse(&request.owner, self.chown)?;
        let path = self.resolve(&request.path)?;
        let mode = if request.mode == 0 {
            0o755
        } else {
            request.mode & 0o7777
        };
        let (root, rel) = (self.root.clone(), self.relative(&path).to_owned());
        let made = tokio::task::spawn_blocking(move || {
            if request.parents {
                owner::make_dirs(&root, &rel, mode, ids, true)
            } else {
                let path = root.join(&rel);
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .mode(mode)
                    .create(&path)
                    .and_then(|()| owner::give(&path, ids))
            }
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        made.map_err(|e| io_status("cannot create", &request.path, e))?;
        Ok(Response::new(MakeDirResponse {}))
    }

    async fn remove(
        &self,
        request: Request<RemoveRequest>,
    ) -> Result<Response<RemoveResponse>, Status> {
        let request = request.into_inner();
        let path = self.resolve(&request.path)?;
        if path == self.root {
            return Err(Status::invalid_argument(
                "refusing to remove the root directory",
            ));
        }
        let meta = tokio::fs::symlink_metadata(&path)
            .await
            .map_err(|e| io_status("cannot remove", &request.path, e))?;
        let result = if meta.is_dir() {
            if request.recursive {
                tokio::fs::remove_dir_all(&path).await
            } else {
                tokio::fs::remove_dir(&path).await
            }
        } else {
            tokio::fs::remove_file(&path).await
        };
        result.map_err(|e| io_status("cannot remove", &request.path, e))?;
        Ok(Response::new(RemoveResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_resource_exhausted_even_when_wrapped() {
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let status = io_status("cannot write", "/x", full);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().starts_with(NO_SPACE));
        // As the tar crate wraps it.
        let wrapped = std::io::Error::new(
            ErrorKind::StorageFull,
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert!(is_no_space(&wrapped));
        assert!(!is_no_space(&std::io::Error::from_raw_os_error(libc::EIO)));
    }

    #[test]
    fn hostile_paths_are_refused() {
        let service = FilesService::new(PathBuf::from("/srv/root"), false);
        assert_eq!(
            service.resolve("/a/b").unwrap(),
            PathBuf::from("/srv/root/a/b")
        );
        assert_eq!(service.resolve("/").unwrap(), PathBuf::from("/srv/root"));
        let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        for bad in [
            "relative",
            "/a/../../etc/passwd",
            "../x",
            "/a\0b",
            "",
            &long,
        ] {
            assert!(service.resolve(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
