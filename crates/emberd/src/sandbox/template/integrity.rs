//! A template's integrity: the completion marker records the template's key
//! and the size and digest of every file in it; a template whose files no
//! longer match is corrupt, and only a corrupt template is ever removed.
//!
//! The digest is a SHA-256 of a file's content page by page, zero pages
//! left out (with each page's offset, and the size, hashed in): a guest's
//! RAM file is mostly holes and zeros, which are then skipped (`SEEK_DATA`)
//! or only compared, never hashed. Files are flushed to disk before the
//! marker is written, so a template outlives a host crash or is refused.
//!
//! The quick check (every file present with its recorded size) is cheap and
//! runs before each use; the full check hashes every byte and runs when a
//! restore fails for a reason other than a timeout. Neither deletes
//! anything: that is the store's call.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Marker written last into a complete template.
pub(super) const COMPLETE_MARKER: &str = "complete";
/// First line of a marker in this format. Format 3: page digests, and a
/// guest RAM file beside the device state where the backend keeps one;
/// templates of older formats are rebuilt, never read.
const MARKER_HEADER: &str = "emberd-template 3";
/// The unit of the digest: zero pages of this size are left out.
const PAGE: usize = 4096;

/// Why a template is not what its marker says.
#[derive(Debug, thiserror::Error)]
pub(in crate::sandbox) enum IntegrityError {
    #[error("the template has no completion marker")]
    NoMarker,
    #[error("the completion marker is unreadable or of an older format")]
    BadMarker,
    #[error("the template was made under another key")]
    WrongKey,
    #[error("{0} is missing")]
    Missing(String),
    #[error("{0} has changed size")]
    Size(String),
    #[error("{0} does not match its checksum")]
    Checksum(String),
    #[error("{0} is not listed in the completion marker")]
    Unlisted(String),
    #[error("cannot read the template")]
    Io(#[source] std::io::Error),
}

/// What a marker says: per file name, its size and SHA-256.
type Listing = BTreeMap<String, (u64, String)>;

/// Files of a template: everything in `dir` but the marker and dot-files.
fn template_files(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == COMPLETE_MARKER || name.starts_with('.') {
            continue;
        }
        names.push(name);
    }
    names.sort();
    Ok(names)
}

/// The digest of `path`'s content (see the module docs). Holes and zero
/// pages give the same digest, so it depends on the bytes alone.
fn digest_of(path: &Path) -> std::io::Result<String> {
    use std::io::{Seek, SeekFrom};
    use std::os::fd::AsRawFd;

    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    while offset < size {
        // SAFETY: lseek on a descriptor this function owns; no memory is passed.
        let data = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                // No data after `offset`: the rest is a hole.
                Some(libc::ENXIO) => break,
                // A file system without SEEK_DATA: read everything.
                Some(libc::EINVAL) => {}
                _ => return Err(std::io::Error::last_os_error()),
            }
        } else {
            // Holes are zeros: start at the data's page.
            offset = (data as u64) / PAGE as u64 * PAGE as u64;
        }
        file.seek(SeekFrom::Start(offset))?;
        let n = read_full(&mut file, &mut buf)?;
        if n == 0 {
            break;
        }
        for (i, page) in buf[..n].chunks(PAGE).enumerate() {
            if page.iter().any(|&b| b != 0) {
                hash.update((offset + (i * PAGE) as u64).to_le_bytes());
                hash.update(page);
            }
        }
        offset += n as u64;
    }
    hash.update(size.to_le_bytes());
    Ok(hex::encode(hash.finalize()))
}

/// Reads until `buf` is full or the file ends.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Hashes every file of the template in `dir` and writes its marker.
/// Blocking: run it off the async workers for large templates.
pub(super) fn write_marker(dir: &Path, key: &str) -> std::io::Result<()> {
    let mut text = format!("{MARKER_HEADER}\nkey {key}\n");
    for name in template_files(dir)? {
        let path = dir.join(&name);
        std::fs::File::open(&path)?.sync_all()?;
        let size = std::fs::metadata(&path)?.len();
        let sum = digest_of(&path)?;
        text.push_str(&format!("file {sum} {size} {name}\n"));
    }
    std::fs::write(dir.join(COMPLETE_MARKER), text)
}

fn read_marker(dir: &Path, key: &str) -> Result<Listing, IntegrityError> {
    let text = match std::fs::read_to_string(dir.join(COMPLETE_MARKER)) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(IntegrityError::NoMarker),
        Err(e) => return Err(IntegrityError::Io(e)),
    };
    let mut lines = text.lines();
    if lines.next() != Some(MARKER_HEADER) {
        return Err(IntegrityError::BadMarker);
    }
    match lines.next().and_then(|l| l.strip_prefix("key ")) {
        Some(k) if k == key => {}
        Some(_) => return Err(IntegrityError::WrongKey),
        None => return Err(IntegrityError::BadMarker),
    }
    let mut listing = Listing::new();
    for line in lines {
        let mut parts = line.splitn(4, ' ');
        let (Some("file"), Some(sum), Some(size), Some(name)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(IntegrityError::BadMarker);
        };
        let size = size.parse().map_err(|_| IntegrityError::BadMarker)?;
        listing.insert(name.to_owned(), (size, sum.to_owned()));
    }
    if listing.is_empty() {
        return Err(IntegrityError::BadMarker);
    }
    Ok(listing)
}

/// The quick check: a marker of this key, and every listed file present
/// with its size and nothing else beside them. Cheap (a few `stat`s).
pub(super) fn check_quick(dir: &Path, key: &str) -> Result<(), IntegrityError> {
    let listing = read_marker(dir, key)?;
    check_listing(dir, &listing, |_, _| Ok(()))
}

/// The full check: [`check_quick`], then every file's checksum. Blocking.
pub(super) fn check_full(dir: &Path, key: &str) -> Result<(), IntegrityError> {
    let listing = read_marker(dir, key)?;
    check_listing(dir, &listing, |name, sum| {
        let actual = digest_of(&dir.join(name)).map_err(IntegrityError::Io)?;
        if actual == sum {
            Ok(())
        } else {
            Err(IntegrityError::Checksum(name.to_owned()))
        }
    })
}

fn check_listing(
    dir: &Path,
    listing: &Listing,
    mut check_sum: impl FnMut(&str, &str) -> Result<(), IntegrityError>,
) -> Result<(), IntegrityError> {
    let present = template_files(dir).map_err(IntegrityError::Io)?;
    if let Some(extra) = present.iter().find(|name| !listing.contains_key(*name)) {
        return Err(IntegrityError::Unlisted(extra.clone()));
    }
    for (name, (size, sum)) in listing {
        let actual = match std::fs::metadata(dir.join(name)) {
            Ok(meta) => meta.len(),
            Err(_) => return Err(IntegrityError::Missing(name.clone())),
        };
        if actual != *size {
            return Err(IntegrityError::Size(name.clone()));
        }
        check_sum(name, sum)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vm.migration"), b"memory image").unwrap();
        std::fs::write(dir.path().join("vm.json"), b"{}").unwrap();
        write_marker(dir.path(), "k1").unwrap();
        dir
    }

    #[test]
    fn an_untouched_template_passes_both_checks() {
        let dir = template();
        check_quick(dir.path(), "k1").unwrap();
        check_full(dir.path(), "k1").unwrap();
        assert!(matches!(
            check_quick(dir.path(), "k2"),
            Err(IntegrityError::WrongKey)
        ));
    }

    #[test]
    fn changed_bytes_fail_the_full_check_only() {
        let dir = template();
        std::fs::write(dir.path().join("vm.migration"), b"MEMORY IMAGE").unwrap();
        check_quick(dir.path(), "k1").unwrap();
        assert!(matches!(
            check_full(dir.path(), "k1"),
            Err(IntegrityError::Checksum(name)) if name == "vm.migration"
        ));
    }

    #[test]
    fn missing_resized_or_extra_files_fail_the_quick_check() {
        let dir = template();
        std::fs::write(dir.path().join("vm.migration"), b"short").unwrap();
        assert!(matches!(
            check_quick(dir.path(), "k1"),
            Err(IntegrityError::Size(_))
        ));
        let dir = template();
        std::fs::remove_file(dir.path().join("vm.json")).unwrap();
        assert!(matches!(
            check_quick(dir.path(), "k1"),
            Err(IntegrityError::Missing(_))
        ));
        let dir = template();
        std::fs::write(dir.path().join("planted"), b"x").unwrap();
        assert!(matches!(
            check_quick(dir.path(), "k1"),
            Err(IntegrityError::Unlisted(_))
        ));
    }

    #[test]
    fn the_digest_depends_on_the_bytes_not_on_holes() {
        let dir = tempfile::tempdir().unwrap();
        let sparse = dir.path().join("sparse");
        let file = std::fs::File::create(&sparse).unwrap();
        file.set_len(8 << 20).unwrap();
        drop(file);
        let dense = dir.path().join("dense");
        std::fs::write(&dense, vec![0u8; 8 << 20]).unwrap();
        assert_eq!(digest_of(&sparse).unwrap(), digest_of(&dense).unwrap());
        // One byte anywhere, even deep in a hole, changes it.
        use std::io::{Seek, Write};
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&sparse)
            .unwrap();
        file.seek(std::io::SeekFrom::Start(5 << 20)).unwrap();
        file.write_all(b"x").unwrap();
        drop(file);
        assert_ne!(digest_of(&sparse).unwrap(), digest_of(&dense).unwrap());
        // So does the size, and where a page sits.
        let short = dir.path().join("short");
        std::fs::write(&short, vec![0u8; 4 << 20]).unwrap();
        assert_ne!(digest_of(&short).unwrap(), digest_of(&dense).unwrap());
        let mut a = vec![0u8; 3 * PAGE];
        a[0] = 1;
        let mut b = vec![0u8; 3 * PAGE];
        b[PAGE] = 1;
        std::fs::write(dir.path().join("a"), &a).unwrap();
        std::fs::write(dir.path().join("b"), &b).unwrap();
        assert_ne!(
            digest_of(&dir.path().join("a")).unwrap(),
            digest_of(&dir.path().join("b")).unwrap()
        );
    }

    #[test]
    fn a_marker_of_the_previous_format_is_not_trusted() {
        let dir = template();
        let text = std::fs::read_to_string(dir.path().join(COMPLETE_MARKER)).unwrap();
        let old = text.replacen(MARKER_HEADER, "emberd-template 2", 1);
        std::fs::write(dir.path().join(COMPLETE_MARKER), old).unwrap();
        assert!(matches!(
            check_quick(dir.path(), "k1"),
            Err(IntegrityError::BadMarker)
        ));
    }

    #[test]
    fn an_old_marker_holding_only_the_key_is_not_trusted() {
        let dir = template();
        std::fs::write(dir.path().join(COMPLETE_MARKER), "k1").unwrap();
        assert!(matches!(
            check_quick(dir.path(), "k1"),
            Err(IntegrityError::BadMarker)
        ));
    }
}
