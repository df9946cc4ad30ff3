//! `emberctl cp`: files and directories between here and a sandbox. A file
//! moves as its bytes, a directory as a tar stream built or unpacked here
//! with the `tar` crate while it moves; nothing is held whole in memory. A
//! transfer over [`PROGRESS_THRESHOLD`] shows a progress bar on stderr.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use emberd_api::FileKind;
use emberd_client::{Client, FileStat, PutOptions, UploadBody};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::io::SyncIoBridge;

/// Transfers at least this big get a progress bar.
const PROGRESS_THRESHOLD: u64 = 4 * 1024 * 1024;
/// Buffer between the tar code and the connection.
const PIPE_BYTES: usize = 256 * 1024;

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Local(PathBuf),
    Remote { id: String, path: String },
}

impl Place {
    /// `ID:/abs/path` is a sandbox's path; anything else is local (`-` is
    /// stdin or stdout).
    pub fn parse(text: &str) -> Place {
        match text.split_once(':') {
            Some((id, path)) if !id.is_empty() && !id.contains('/') && path.starts_with('/') => {
                Place::Remote {
                    id: id.to_owned(),
                    path: path.to_owned(),
                }
            }
            _ => Place::Local(PathBuf::from(text)),
        }
    }
}

/// Flags of `emberctl cp`.
#[derive(Debug, Clone, clap::Args)]
pub struct CpArgs {
    /// `LOCAL` or `ID:/path`.
    pub source: String,
    /// `ID:/path` or `LOCAL`.
    pub destination: String,
    /// Make missing parent directories in the sandbox.
    #[arg(short = 'p', long)]
    pub parents: bool,
    /// Who owns what is written in the sandbox: `sandbox` (default) or `root`.
    #[arg(long)]
    pub user: Option<String>,
}

/// The last component of a path, for copies into a directory.
fn base_name(path: &str) -> anyhow::Result<&str> {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .with_context(|| format!("{path:?} names no file"))
}

fn join_remote(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

fn progress_bar(len: Option<u64>) -> ProgressBar {
    match len {
        Some(len) => ProgressBar::new(len).with_style(
            ProgressStyle::with_template(
                "{bytes}/{total_bytes} [{bar:30}] {binary_bytes_per_sec} {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {bytes} {binary_bytes_per_sec}")
                .expect("a valid template"),
        ),
    }
}

/// A bar when `size` (or the estimate) is large, hidden otherwise.
fn bar_for(size: u64, len: Option<u64>) -> ProgressBar {
    if size >= PROGRESS_THRESHOLD {
        progress_bar(len)
    } else {
        ProgressBar::hidden()
    }
}

/// Bytes of the files under `dir` (not following links): the size of a
/// directory's tar, near enough to decide on a progress bar.
fn tree_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => tree_size(&entry.path()),
            Ok(t) if t.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// `emberctl cp SOURCE DESTINATION`.
pub async fn cp(client: &Client, args: CpArgs) -> anyhow::Result<()> {
    match (Place::parse(&args.source), Place::parse(&args.destination)) {
        (Place::Local(local), Place::Remote { id, path }) => {
            upload(client, &local, &id, &path, &args).await
        }
        (Place::Remote { id, path }, Place::Local(local)) => {
            download(client, &id, &path, &local).await
        }
        (Place::Remote { .. }, Place::Remote { .. }) => {
            anyhow::bail!("copy between sandboxes through a local path")
        }
        (Place::Local(_), Place::Local(_)) => {
            anyhow::bail!("one side must be a sandbox path, ID:/path")
        }
    }
}

async fn upload(
    client: &Client,
    local: &Path,
    id: &str,
    path: &str,
    args: &CpArgs,
) -> anyhow::Result<()> {
    let options = PutOptions {
        mkdir: args.parents,
        mode: None,
        user: args.user.clone(),
    };
    if local == Path::new("-") {
        let body = UploadBody::from_reader(tokio::io::stdin(), None);
        client.put_file(id, path, body, &options).await?;
        return Ok(());
    }
    let meta = std::fs::metadata(local).with_context(|| format!("{}", local.display()))?;
    // Into an existing directory (or one named with a trailing `/`): under its own name.
    let name = local
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} names no file", local.display()))?;
    let target = if path.ends_with('/') || is_remote_dir(client, id, path).await? {
        join_remote(path, name)
    } else {
        path.to_owned()
    };
    if meta.is_dir() {
        return upload_dir(client, local, id, &target, options).await;
    }
    let bar = bar_for(meta.len(), Some(meta.len()));
    let progress = bar.clone();
    let body = UploadBody::from_file(local)
        .await?
        .with_progress(Arc::new(move |n| progress.set_position(n)));
    let options = PutOptions {
        mode: Some(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777),
        ..options
    };
    let result = client.put_file(id, &target, body, &options).await;
    bar.finish_and_clear();
    result?;
    Ok(())
}

async fn is_remote_dir(client: &Client, id: &str, path: &str) -> anyhow::Result<bool> {
    match client.stat_file(id, path).await {
        Ok(stat) => Ok(stat.kind == Some(FileKind::Dir)),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn upload_dir(
    client: &Client,
    local: &Path,
    id: &str,
    target: &str,
    options: PutOptions,
) -> anyhow::Result<()> {
    let (reader, writer) = tokio::io::duplex(PIPE_BYTES);
    let root = local.to_owned();
    let build = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut tar = tar::Builder::new(SyncIoBridge::new(writer));
        tar.follow_symlinks(false);
        append_contents(&mut tar, &root)?;
        tar.into_inner()?; // writes the end blocks; dropping it ends the stream
        Ok(())
    });
    let bar = bar_for(tree_size(local), None);
    let progress = bar.clone();
    let body = UploadBody::from_reader(reader, None)
        .with_progress(Arc::new(move |n| progress.set_position(n)));
    // The daemon makes the directory (and its parents); mode and mkdir are
    // for single files and refused with a tar.
    let options = PutOptions {
        mkdir: false,
        mode: None,
        ..options
    };
    let (sent, built) = tokio::join!(client.put_tar(id, target, body, &options), build);
    bar.finish_and_clear();
    // The daemon's answer first: when it refuses, the tar side only sees a closed pipe.
    sent?;
    built?.context("reading the local directory")?;
    Ok(())
}

/// Adds what is inside `dir` (not `dir` itself) to `tar`, names relative to it.
fn append_contents<W: std::io::Write>(tar: &mut tar::Builder<W>, dir: &Path) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("{}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        if entry.file_type()?.is_dir() {
            tar.append_dir_all(&name, &path)
        } else {
            tar.append_path_with_name(&path, &name)
        }
        .with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}

/// `HEAD` of `path`; a 404 (which has no body to say what is missing)
/// becomes the daemon's own message, asked for with a `GET`.
async fn stat(client: &Client, id: &str, path: &str) -> anyhow::Result<FileStat> {
    match client.stat_file(id, path).await {
        Ok(stat) => Ok(stat),
        Err(e) if e.is_not_found() => match client.get_file(id, path).await {
            Err(explained) => Err(explained.into()),
            Ok(_) => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

async fn download(client: &Client, id: &str, path: &str, local: &Path) -> anyhow::Result<()> {
    let stat = stat(client, id, path).await?;
    let is_dir = stat.kind == Some(FileKind::Dir);
    if local == Path::new("-") {
        anyhow::ensure!(!is_dir, "{path} is a directory: copy it to a local path");
        let download = client.get_file(id, path).await?;
        download.write_to(&mut tokio::io::stdout(), None).await?;
        return Ok(());
    }
    let into_dir = local.is_dir();
    let target = if into_dir {
        local.join(base_name(path)?)
    } else {
        local.to_owned()
    };
    if is_dir {
        return download_dir(client, id, path, &target).await;
    }
    let download = client.get_file(id, path).await?;
    let len = download.content_length();
    let bar = bar_for(len.unwrap_or(0), len);
    let progress = bar.clone();
    let mut file = tokio::fs::File::create(&target)
        .await
        .with_context(|| format!("{}", target.display()))?;
    let result = download
        .write_to(&mut file, Some(&move |n| progress.set_position(n)))
        .await;
    bar.finish_and_clear();
    if let Err(e) = result {
        drop(file);
        let _ = std::fs::remove_file(&target); // not a partial copy that looks whole
        return Err(e.into());
    }
    if let Some(mode) = stat.mode {
        use std::os::unix::fs::PermissionsExt as _;
        let permissions = std::fs::Permissions::from_mode(mode & 0o777);
        tokio::fs::set_permissions(&target, permissions).await?;
    }
    Ok(())
}

async fn download_dir(client: &Client, id: &str, path: &str, target: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(target).with_context(|| format!("{}", target.display()))?;
    let download = client.get_tar(id, path).await?;
    let (reader, mut writer) = tokio::io::duplex(PIPE_BYTES);
    let dest = target.to_owned();
    // Paths of the archive come from the guest: `unpack` refuses entries
    // that would land outside `dest` (`..`, absolute names, through links).
    let unpack = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        tar::Archive::new(SyncIoBridge::new(reader)).unpack(&dest)?;
        Ok(())
    });
    let bar = bar_for(PROGRESS_THRESHOLD, None);
    let progress = bar.clone();
    let received = async {
        let result = download
            .write_to(&mut writer, Some(&move |n| progress.set_position(n)))
            .await;
        drop(writer); // the end of the tar for the unpacking side
        result
    };
    let (received, unpacked) = tokio::join!(received, unpack);
    bar.finish_and_clear();
    // The local side first: when it fails, the download only sees a closed pipe.
    unpacked?.with_context(|| format!("unpacking into {}", target.display()))?;
    received?;
    Ok(())
}

#[cfg(test)]
mod tests;
