//! A writer for the `newc` cpio format the kernel unpacks as initramfs.
//!
//! Entries are written in the order given with fixed owners (root), a fixed
//! mtime (0) and increasing inode numbers, so equal inputs give equal bytes.

use std::io::{self, Write};

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";

/// One entry of the archive.
#[derive(Debug, Clone)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    CharDevice {
        path: String,
        mode: u32,
        major: u32,
        minor: u32,
    },
}

/// Writes `entries` and the trailer as a newc archive.
pub fn write_archive<W: Write>(out: &mut W, entries: &[Entry]) -> io::Result<()> {
    let mut written = 0usize;
    for (i, entry) in entries.iter().enumerate() {
        let ino = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let (path, mode, data, rdev): (&str, u32, &[u8], (u32, u32)) = match entry {
            Entry::Dir { path, mode } => (path, 0o040000 | mode, &[], (0, 0)),
            Entry::File { path, mode, data } => (path, 0o100000 | mode, data, (0, 0)),
            Entry::CharDevice {
                path,
                mode,
                major,
                minor,
            } => (path, 0o020000 | mode, &[], (*major, *minor)),
        };
        let nlink = if matches!(entry, Entry::Dir { .. }) {
            2
        } else {
            1
        };
        written += write_entry(out, ino, mode, nlink, path, data, rdev)?;
    }
    written += write_entry(out, 0, 0, 1, TRAILER, &[], (0, 0))?;
    // Pad the archive to a whole block, as cpio(1) does.
    let pad = (512 - written % 512) % 512;
    out.write_all(&vec![0u8; pad])
}

fn write_entry<W: Write>(
    out: &mut W,
    ino: u32,
    mode: u32,
    nlink: u32,
    path: &str,
    data: &[u8],
    (rdev_major, rdev_minor): (u32, u32),
) -> io::Result<usize> {
    let name_size = path.len() + 1;
    let file_size = u32::try_from(data.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large for cpio"))?;
    let header = format!(
        "{MAGIC}{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{file_size:08x}{dev_major:08x}{dev_minor:08x}{rdev_major:08x}{rdev_minor:08x}{name_size:08x}{check:08x}",
        uid = 0,
        gid = 0,
        mtime = 0,
        dev_major = 0,
        dev_minor = 0,
        check = 0,
    );
    out.write_all(header.as_bytes())?;
    out.write_all(path.as_bytes())?;
    out.write_all(&[0])?;
    let mut len = header.len() + name_size;
    let pad = (4 - len % 4) % 4;
    out.write_all(&[0u8; 3][..pad])?;
    len += pad;
    out.write_all(data)?;
    len += data.len();
    let pad = (4 - len % 4) % 4;
    out.write_all(&[0u8; 3][..pad])?;
    Ok(len + pad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_list_back_with_cpio() {
        let entries = vec![
            Entry::Dir {
                path: "dev".into(),
                mode: 0o755,
            },
            Entry::CharDevice {
                path: "dev/console".into(),
                mode: 0o600,
                major: 5,
                minor: 1,
            },
            Entry::File {
                path: "init".into(),
                mode: 0o755,
                data: b"#!/bin/sh\necho hi\n".to_vec(),
            },
        ];
        let mut bytes = Vec::new();
        write_archive(&mut bytes, &entries).unwrap();
        assert_eq!(bytes.len() % 512, 0);
        assert!(bytes.starts_with(b"070701"));
        let mut again = Vec::new();
        write_archive(&mut again, &entries).unwrap();
        assert_eq!(bytes, again, "the same entries give the same bytes");
        // Entry names and the trailer appear in order.
        let text = String::from_utf8_lossy(&bytes);
        let order: Vec<usize> = ["dev\0", "dev/console\0", "init\0", "TRAILER!!!\0"]
            .iter()
            .map(|name| text.find(name).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");

        // cpio(1) reads it back: names, types, modes, owners, the device and
        // the file's content (installed by scripts/install-deps.sh).
        let listing = cpio(&["-itv", "--quiet"], &bytes);
        let lines: Vec<Vec<&str>> = listing
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines.len(), 3, "{listing}");
        assert_eq!(lines[0][0], "drwxr-xr-x");
        assert_eq!(lines[1][0], "crw-------");
        assert_eq!(lines[1][4], "5,");
        assert_eq!(lines[1][5], "1");
        assert_eq!(lines[2][0], "-rwxr-xr-x");
        for line in &lines {
            assert_eq!((line[2], line[3]), ("root", "root"), "{listing}");
        }
        assert_eq!(
            lines.iter().map(|l| *l.last().unwrap()).collect::<Vec<_>>(),
            ["dev", "dev/console", "init"]
        );
        let content = cpio(&["-i", "--to-stdout", "--quiet", "init"], &bytes);
        assert_eq!(content, "#!/bin/sh\necho hi\n");
    }

    fn cpio(args: &[&str], archive: &[u8]) -> String {
        use std::process::{Command, Stdio};
        let mut child = Command::new("cpio")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cpio is installed (scripts/install-deps.sh)");
        child.stdin.take().unwrap().write_all(archive).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "cpio {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}
