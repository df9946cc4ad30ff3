//! Sandbox ids and their private directories.

use std::path::Path;

use rand::RngCore;

/// `sb_` followed by 12 lowercase hex digits.
pub fn new_sandbox_id() -> String {
    let mut bytes = [0u8; 6];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("sb_{}", hex::encode(bytes))
}

/// True for strings shaped like a sandbox id.
pub fn is_sandbox_id(s: &str) -> bool {
    s.strip_prefix("sb_").is_some_and(|hex| {
        hex.len() == 12
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Creates `dir` readable by its owner only; fails if it exists.
pub(super) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_documented_shape() {
        for _ in 0..100 {
            let id = new_sandbox_id();
            assert!(is_sandbox_id(&id), "{id}");
        }
        assert!(!is_sandbox_id("sb_123"));
        assert!(!is_sandbox_id("sb_ABCDEF123456"));
        assert!(!is_sandbox_id("../etc/passwd"));
    }
}
