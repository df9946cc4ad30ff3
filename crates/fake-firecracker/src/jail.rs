//! The fake's view of a jail: when the fake jailer started it
//! (`FAKE_FC_JAIL_ROOT` set, working directory = the jail's root), every
//! path Firecracker would open is resolved inside that root, as a real
//! chroot would, and a path that leaves it (`..` above the root, or through
//! a symbolic link) is refused. Outside a jail paths are taken as given.

use std::path::{Component, Path, PathBuf};

/// The jail's root on the host, when the fake runs jailed.
pub(crate) fn root() -> Option<PathBuf> {
    std::env::var_os("FAKE_FC_JAIL_ROOT").map(PathBuf::from)
}

/// Where the fake finds `path` (as Firecracker names it): relative to the
/// working directory, which is the jail's root.
pub(crate) fn resolve(path: &str) -> Result<PathBuf, String> {
    if root().is_none() {
        return Ok(PathBuf::from(path));
    }
    let mut inside = PathBuf::from(".");
    for component in Path::new(path).components() {
        match component {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                if !inside.pop() || inside.as_os_str().is_empty() {
                    return Err(format!("{path}: outside the jail"));
                }
            }
            Component::Normal(name) => {
                inside.push(name);
                let is_link = std::fs::symlink_metadata(&inside)
                    .map(|m| m.file_type().is_symlink())
                    .unwrap_or(false);
                if is_link {
                    return Err(format!("{path}: a symbolic link in the jail"));
                }
            }
        }
    }
    Ok(inside)
}

/// A jailed fake keeps its guest in `<tmp>/fake-fc-<id>-<pid>`; a fake
/// killed outright (as jailed VMMs are) cannot remove it, so the next one
/// removes those whose fake is gone.
pub(crate) fn remove_dead_guest_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("fake-fc-")
            .and_then(|rest| rest.rsplit_once('-'))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_inside_the_jail_and_never_leave_it() {
        let jail = tempfile::tempdir().unwrap();
        std::env::set_current_dir(jail.path()).unwrap();
        std::env::set_var("FAKE_FC_JAIL_ROOT", jail.path());
        assert_eq!(resolve("/vmlinux").unwrap(), Path::new("./vmlinux"));
        assert_eq!(resolve("v.sock").unwrap(), Path::new("./v.sock"));
        assert!(resolve("/../etc/passwd").is_err());
        assert!(resolve("a/../../x").is_err());
        std::os::unix::fs::symlink("/etc", jail.path().join("etc")).unwrap();
        assert!(resolve("/etc/passwd").is_err());
    }
}
