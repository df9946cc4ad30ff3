//! Who owns what the files API creates, and making directories with that
//! owner. Only the agent in the guest changes owners; as a host process it
//! leaves everything to itself (it may not be root).

use std::io::ErrorKind;
use std::os::unix::fs::{lchown, DirBuilderExt};
use std::path::{Component, Path};

use emberd_proto::boundary::{ROOT_USER, SANDBOX_GID, SANDBOX_UID, SANDBOX_USER};
use tonic::Status;

/// The ids created files and directories are given; `None`: left as they
/// are made (by root in the guest, by the agent's user on a host).
pub type Ids = Option<(u32, u32)>;

/// Parses `owner` ("" or "sandbox", or "root"); `chown` says whether the
/// agent changes owners at all (the guest).
pub fn parse(owner: &str, chown: bool) -> Result<Ids, Status> {
    let ids = match owner {
        "" | SANDBOX_USER => Some((SANDBOX_UID, SANDBOX_GID)),
        ROOT_USER => None,
        other => {
            return Err(Status::invalid_argument(format!(
                "owner must be {SANDBOX_USER:?} or {ROOT_USER:?}, not {:?}",
                other.chars().take(64).collect::<String>()
            )))
        }
    };
    Ok(ids.filter(|_| chown))
}

/// Gives `path` (never followed) to `ids`.
pub fn give(path: &Path, ids: Ids) -> std::io::Result<()> {
    match ids {
        Some((uid, gid)) => lchown(path, Some(uid), Some(gid)),
        None => Ok(()),
    }
}

/// Makes the directories of `rel` under the existing directory `base`, each
/// missing one with `mode` and given to `ids`. With `follow_links` false an
/// existing symlink on the way is refused rather than followed (tar entries
/// must not be led out of their directory).
pub fn make_dirs(
    base: &Path,
    rel: &Path,
    mode: u32,
    ids: Ids,
    follow_links: bool,
) -> std::io::Result<()> {
    let mut at = base.to_path_buf();
    for part in rel.components() {
        match part {
            Component::Normal(part) => at.push(part),
            Component::CurDir => continue,
            _ => return Err(ErrorKind::InvalidInput.into()),
        }
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.is_dir() => continue,
            Ok(meta) if meta.file_type().is_symlink() && follow_links && at.is_dir() => continue,
            Ok(meta) if meta.file_type().is_symlink() && !follow_links => {
                return Err(std::io::Error::new(
                    ErrorKind::InvalidInput,
                    "the path passes through a symlink",
                ))
            }
            Ok(_) => return Err(std::io::Error::from_raw_os_error(libc::ENOTDIR)),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        match std::fs::DirBuilder::new().mode(mode).create(&at) {
            Ok(()) => give(&at, ids)?,
            // Made by someone else meanwhile.
            Err(e) if e.kind() == ErrorKind::AlreadyExists && at.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_parse_and_host_mode_changes_none() {
        assert_eq!(parse("", true).unwrap(), Some((SANDBOX_UID, SANDBOX_GID)));
        assert_eq!(parse("sandbox", true).unwrap(), Some((1000, 1000)));
        assert_eq!(parse("root", true).unwrap(), None);
        assert_eq!(parse("sandbox", false).unwrap(), None);
        assert_eq!(
            parse("bogus", true).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn made_parents_stop_at_symlinks_unless_followed() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/", dir.path().join("out")).unwrap();
        assert!(make_dirs(dir.path(), Path::new("out/x"), 0o755, None, false).is_err());
        make_dirs(dir.path(), Path::new("a/b/c"), 0o755, None, false).unwrap();
        assert!(dir.path().join("a/b/c").is_dir());
    }
}
