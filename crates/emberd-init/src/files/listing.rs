//! `ListDir`: a directory's entries, down to a depth, bounded in count.
//! Symlinks are listed with their targets and never followed (the listed
//! directory itself may be reached through one).

use std::path::{Path, PathBuf};

use emberd_proto::boundary::MAX_LIST_ENTRIES;
use emberd_proto::v1::FileInfo;

use super::file_info;

/// The entries under `host` (known to the host as `guest`) down to `depth`
/// levels (0 counts as 1), at most [`MAX_LIST_ENTRIES`], sorted by path;
/// whether some were left out. Which ones are left out is unspecified.
/// A subdirectory that cannot be read is listed without its contents.
pub fn list(host: &Path, guest: &str, depth: u32) -> std::io::Result<(Vec<FileInfo>, bool)> {
    let levels = depth.max(1);
    let mut entries: Vec<FileInfo> = Vec::new();
    let mut truncated = false;
    let mut stack: Vec<(PathBuf, String, u32)> = vec![(host.to_owned(), guest.to_owned(), 1)];
    while let Some((dir, guest_dir, level)) = stack.pop() {
        let reader = match std::fs::read_dir(&dir) {
            Ok(reader) => reader,
            Err(e) if level == 1 => return Err(e),
            Err(_) => continue,
        };
        let mut names = Vec::new();
        for entry in reader {
            let Ok(entry) = entry else { continue };
            if entries.len() + names.len() >= MAX_LIST_ENTRIES {
                truncated = true;
                break;
            }
            names.push(entry.file_name());
        }
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let path = dir.join(&name);
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let guest_path = format!(
                "{}/{}",
                guest_dir.trim_end_matches('/'),
                name.to_string_lossy()
            );
            entries.push(file_info(&guest_path, &meta, &path));
            if meta.is_dir() && level < levels {
                subdirs.push((path, guest_path, level + 1));
            }
        }
        if truncated {
            break;
        }
        stack.extend(subdirs.into_iter().rev());
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((entries, truncated))
}
