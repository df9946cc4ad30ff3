//! `ReadTar`: packs a directory (its contents, named relative to it) or one
//! file (named by its file name) as a tar stream, on a blocking thread that
//! writes through a bounded channel: never whole in memory.
//!
//! Symlinks are packed as links, never followed; sockets, fifos and device
//! nodes are left out. A file that changes size while packed keeps the size
//! it had when its header was written (cut, or padded with zeros), so the
//! stream stays a valid archive.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use emberd_proto::v1::FileChunk;
use tar::{Header, HeaderMode};
use tokio::sync::mpsc;
use tonic::Status;

use super::{io_status, CHUNK};

/// Chunks queued for the host before the packer waits.
const QUEUED_CHUNKS: usize = 4;

/// Sends what the packer writes, in chunks of [`CHUNK`].
struct ChannelWriter {
    tx: mpsc::Sender<Result<FileChunk, Status>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(FileChunk { data }))
            .map_err(|_| std::io::ErrorKind::BrokenPipe.into())
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.send()
    }
}

/// Starts packing `host` (known to the host as `guest`, already `lstat`ed
/// as `meta`); the archive comes out of the returned receiver.
pub fn read_tar(
    host: PathBuf,
    guest: String,
    meta: &std::fs::Metadata,
) -> mpsc::Receiver<Result<FileChunk, Status>> {
    let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
    let is_dir = meta.is_dir();
    tokio::task::spawn_blocking(move || {
        let writer = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        let mut builder = tar::Builder::new(writer);
        let packed = if is_dir {
            pack_dir(&mut builder, &host)
        } else {
            let name = host.file_name().map(PathBuf::from).unwrap_or_default();
            pack_one(&mut builder, &host, &name).map(|_| ())
        };
        let finished = packed.and_then(|()| builder.into_inner().map_err(|e| (host.clone(), e)));
        match finished.and_then(|mut w| w.flush().map_err(|e| (host.clone(), e))) {
            Ok(()) => {}
            // The host is gone: nobody to tell.
            Err((_, e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err((path, e)) => {
                let rel = path.strip_prefix(&host).unwrap_or(&path);
                let shown = if rel.as_os_str().is_empty() {
                    guest
                } else {
                    format!("{}/{}", guest.trim_end_matches('/'), rel.display())
                };
                let _ = tx.blocking_send(Err(io_status("cannot pack", &shown, e)));
            }
        }
    });
    rx
}

type Packed = Result<(), (PathBuf, std::io::Error)>;

/// Packs the contents of `dir`, depth first in name order.
fn pack_dir(builder: &mut tar::Builder<ChannelWriter>, dir: &Path) -> Packed {
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let here = dir.join(&rel);
        let mut names = std::fs::read_dir(&here)
            .and_then(|r| {
                r.map(|e| e.map(|e| e.file_name()))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|e| (here.clone(), e))?;
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let rel = rel.join(name);
            if pack_one(builder, &dir.join(&rel), &rel)? {
                subdirs.push(rel);
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(())
}

/// Packs one entry as `name`; returns whether it is a directory to descend.
fn pack_one(
    builder: &mut tar::Builder<ChannelWriter>,
    path: &Path,
    name: &Path,
) -> Result<bool, (PathBuf, std::io::Error)> {
    let failed = |e: std::io::Error| (path.to_owned(), e);
    let meta = std::fs::symlink_metadata(path).map_err(failed)?;
    let mut header = Header::new_gnu();
    header.set_metadata_in_mode(&meta, HeaderMode::Complete);
    // Permission bits only, as tar writers do (the crate keeps the type bits).
    header.set_mode(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777);
    let kind = meta.file_type();
    if kind.is_symlink() {
        header.set_size(0);
        let target = std::fs::read_link(path).map_err(failed)?;
        builder
            .append_link(&mut header, name, target)
            .map_err(failed)?;
    } else if kind.is_dir() {
        header.set_size(0);
        builder
            .append_data(&mut header, name, std::io::empty())
            .map_err(failed)?;
        return Ok(true);
    } else if kind.is_file() {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(failed)?;
        let size = meta.len();
        header.set_size(size);
        let data = file.take(size).chain(std::io::repeat(0)).take(size);
        builder
            .append_data(&mut header, name, data)
            .map_err(failed)?;
    }
    Ok(false)
}
