//! Locating host programs (QEMU, Firecracker, the image builder's tools).
//!
//! Owns resolving a program name the way a shell would; it never runs what
//! it finds.

use std::path::{Path, PathBuf};

/// Resolves a bare program name through PATH; a path with a slash is taken as is.
pub fn find_in_path(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_owned());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_name_is_found_on_path() {
        let found = find_in_path(Path::new("sh")).expect("sh is on PATH");
        assert!(found.is_absolute() && found.ends_with("sh"), "{found:?}");
        assert_eq!(find_in_path(Path::new("no-such-program-here")), None);
    }

    #[test]
    fn a_path_with_a_slash_is_not_searched() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tool");
        std::fs::write(&file, b"").unwrap();
        assert_eq!(find_in_path(&file), Some(file.clone()));
        assert_eq!(find_in_path(&dir.path().join("missing")), None);
        assert_eq!(find_in_path(Path::new("./sh-not-here/sh")), None);
    }
}
