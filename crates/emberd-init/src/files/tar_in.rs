//! `WriteTar`: unpacks a tar stream under a directory, chunk by chunk as it
//! arrives (never held whole), on a blocking thread fed through a channel.
//!
//! Kept: regular files (with their permission bits, not setuid/setgid/
//! sticky), directories, symlinks (as links, whatever they point to),
//! modification times. Refused, ending the unpack with INVALID_ARGUMENT:
//! absolute paths, paths with `..`, paths through a symlink, hard links,
//! device nodes, fifos and other kinds. What was unpacked before a refused
//! entry stays. Every made file and directory goes to the request's owner.

use std::io::{ErrorKind, Read};
use std::path::{Component, Path, PathBuf};

use emberd_proto::v1::{write_tar_request, WriteTarResponse};
use tar::EntryType;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::owner::{give, make_dirs, Ids};
use super::{io_status, is_no_space, NO_SPACE};

/// Chunks buffered between the gRPC stream and the unpacker.
const QUEUED_CHUNKS: usize = 4;

/// Feeds the unpacker: each `read` takes from the next chunk of the stream.
struct ChannelReader {
    rx: mpsc::Receiver<Result<Vec<u8>, Status>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => (self.chunk, self.at) = (chunk, 0),
                Some(Err(status)) => {
                    return Err(std::io::Error::other(format!(
                        "the tar stream broke: {}",
                        status.message()
                    )))
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Unpacks the data messages of `stream` under `dir` (host path; `guest`
/// for messages), which is made with its parents when missing.
pub async fn write_tar(
    mut stream: Streaming<emberd_proto::v1::WriteTarRequest>,
    root: PathBuf,
    dir: PathBuf,
    guest: String,
    ids: Ids,
) -> Result<WriteTarResponse, Status> {
    let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
    let feeder = tokio::spawn(async move {
        loop {
            let item = match stream.message().await {
                Ok(Some(message)) => match message.kind {
                    Some(write_tar_request::Kind::Data(data)) => Ok(data),
                    _ => Err(Status::invalid_argument("only data may follow `start`")),
                },
                Ok(None) => return,
                Err(status) => Err(status),
            };
            let failed = item.is_err();
            // The unpacker has stopped: the rest of the stream is not needed.
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    let unpack = tokio::task::spawn_blocking(move || {
        let rel = dir.strip_prefix(&root).unwrap_or(&dir).to_owned();
        make_dirs(&root, &rel, 0o755, ids, true)
            .map_err(|e| io_status("cannot create", &guest, e))?;
        let reader = ChannelReader {
            rx,
            chunk: Vec::new(),
            at: 0,
        };
        unpack(reader, &dir, &guest, ids)
    });
    let result = unpack
        .await
        .map_err(|e| Status::internal(format!("the unpacker failed: {e}")))?;
    feeder.abort();
    result
}

fn unpack(
    reader: ChannelReader,
    dir: &Path,
    guest: &str,
    ids: Ids,
) -> Result<WriteTarResponse, Status> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(false);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    let broken = |e: std::io::Error| tar_status(guest, "cannot read the tar stream", e);
    let mut response = WriteTarResponse::default();
    // Directory modes are applied last, so that a read-only directory can
    // still be filled.
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    for entry in archive.entries().map_err(broken)? {
        let mut entry = entry.map_err(broken)?;
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            continue;
        }
        let name = entry.path().map_err(broken)?.into_owned();
        let rel = entry_path(&name)?;
        let shown = name.display().to_string();
        let refused = |what: &str| {
            Status::invalid_argument(format!("tar entry {shown:?} is {what}: refused"))
        };
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::Symlink => {}
            EntryType::Directory => {}
            EntryType::Link => return Err(refused("a hard link")),
            EntryType::Char | EntryType::Block => return Err(refused("a device node")),
            EntryType::Fifo => return Err(refused("a fifo")),
            _ => return Err(refused("of a kind that is not unpacked")),
        }
        let failed = |e: std::io::Error| tar_status(guest, &format!("cannot unpack {shown:?}"), e);
        if rel.as_os_str().is_empty() {
            continue; // The directory itself ("./").
        }
        let parent = rel.parent().unwrap_or(Path::new(""));
        let made = |rel: &Path| match make_dirs(dir, rel, 0o755, ids, false) {
            Err(e) if e.kind() == ErrorKind::InvalidInput => Err(refused("led through a symlink")),
            made => made.map_err(failed),
        };
        made(parent)?;
        let target = dir.join(&rel);
        if kind == EntryType::Directory {
            made(&rel)?;
            let mode = entry.header().mode().map_err(broken)? & 0o777;
            dir_modes.push((target, mode));
        } else {
            if !entry.unpack_in(dir).map_err(failed)? {
                return Err(refused("outside the directory"));
            }
            give(&target, ids).map_err(failed)?;
            if kind != EntryType::Symlink {
                response.bytes_written += entry.size();
            }
        }
        response.entries += 1;
    }
    for (path, mode) in dir_modes.into_iter().rev() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| tar_status(guest, "cannot set a directory's mode", e))?;
    }
    Ok(response)
}

/// The entry's path relative to the directory, refusing one that leaves it.
fn entry_path(name: &Path) -> Result<PathBuf, Status> {
    let mut rel = PathBuf::new();
    for part in name.components() {
        match part {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(Status::invalid_argument(format!(
                    "tar entry {:?} is absolute: refused",
                    name.display().to_string()
                )))
            }
            Component::ParentDir => {
                return Err(Status::invalid_argument(format!(
                    "tar entry {:?} leaves the directory: refused",
                    name.display().to_string()
                )))
            }
        }
    }
    Ok(rel)
}

/// An unpack error: a full disk is RESOURCE_EXHAUSTED, bad data
/// INVALID_ARGUMENT, the rest as any file error.
fn tar_status(guest: &str, what: &str, error: std::io::Error) -> Status {
    if is_no_space(&error) {
        return Status::resource_exhausted(format!("{NO_SPACE}: {what} in {guest}"));
    }
    if matches!(error.kind(), ErrorKind::InvalidData | ErrorKind::Other) {
        return Status::invalid_argument(format!("{what} in {guest}: {error}"));
    }
    io_status(what, guest, error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_leaving_the_directory_are_refused() {
        assert_eq!(entry_path(Path::new("./a/b")).unwrap(), Path::new("a/b"));
        for bad in ["/etc/passwd", "../escape", "a/../../b"] {
            assert!(entry_path(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
