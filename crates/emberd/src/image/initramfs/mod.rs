//! The initramfs: `/init` (the static `emberd-init`), `/dev/console`, the
//! guest's kernel modules and `/lib/modules/order`, as an uncompressed newc
//! cpio archive.
//!
//! Owns checking that the init binary can run as the guest's PID 1, and
//! choosing the modules (cached by the kernel step); never fetches anything.

pub mod cpio;
pub mod modules;

use std::io::Write;
use std::path::{Path, PathBuf};

use self::cpio::Entry;
use super::store::{Store, StoreError};

/// Errors building the initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("cannot access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} cannot be the guest's /init: {why}")]
    InitBinary { path: PathBuf, why: String },
    #[error("cannot store the initramfs")]
    Store(#[source] StoreError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> InitramfsError + '_ {
    move |source| InitramfsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Packs `init_bin` and the modules cached in `modules_dir` into a blob of
/// `store`; returns its path.
pub fn build(
    store: &Store,
    init_bin: &Path,
    modules_dir: &Path,
) -> Result<PathBuf, InitramfsError> {
    let init = std::fs::read(init_bin).map_err(io_error(init_bin))?;
    let mut entries = Vec::new();
    for dir in [
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "mnt",
        "lib",
        "lib/modules",
    ] {
        entries.push(Entry::Dir {
            path: dir.into(),
            mode: 0o755,
        });
    }
    entries.push(Entry::CharDevice {
        path: "dev/console".into(),
        mode: 0o600,
        major: 5,
        minor: 1,
    });
    entries.push(Entry::File {
        path: "init".into(),
        mode: 0o755,
        data: init,
    });
    let order_path = modules_dir.join("order");
    let order = std::fs::read_to_string(&order_path).map_err(io_error(&order_path))?;
    for name in order.lines().filter(|l| !l.is_empty()) {
        let path = modules_dir.join(name);
        entries.push(Entry::File {
            path: format!("lib/modules/{name}"),
            mode: 0o644,
            data: std::fs::read(&path).map_err(io_error(&path))?,
        });
    }
    entries.push(Entry::File {
        path: "lib/modules/order".into(),
        mode: 0o644,
        data: order.into_bytes(),
    });
    let tmp = store.scratch_file("initramfs");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io_error(&tmp))?);
    cpio::write_archive(&mut file, &entries).map_err(io_error(&tmp))?;
    file.flush().map_err(io_error(&tmp))?;
    drop(file);
    store.add(&tmp, ".cpio").map_err(InitramfsError::Store)
}

/// `/init` must be an executable the guest kernel can run without a loader:
/// a static x86-64 ELF (no `PT_INTERP`).
pub fn check_init_binary(path: &Path) -> Result<(), InitramfsError> {
    let bytes = std::fs::read(path).map_err(io_error(path))?;
    let not_static = |why: &str| {
        Err(InitramfsError::InitBinary {
            path: path.to_owned(),
            why: why.to_owned(),
        })
    };
    // ELF64 header: class at 4, machine at 18, program headers at 32 (offset),
    // 54 (entry size) and 56 (count); PT_INTERP is type 3.
    if !bytes.starts_with(b"\x7fELF") || bytes.get(4) != Some(&2) {
        return not_static("it is not a 64-bit ELF executable");
    }
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    if u16_at(18) != Some(62) {
        return not_static("it is not built for x86-64");
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        return not_static("its ELF header is truncated");
    };
    for i in 0..usize::from(phnum) {
        let at = phoff as usize + i * usize::from(phentsize);
        match bytes.get(at..at + 4) {
            Some(kind) if kind == 3u32.to_le_bytes() => {
                return not_static(
                    "it is dynamically linked (build it for x86_64-unknown-linux-musl)",
                )
            }
            Some(_) => {}
            None => return not_static("its program headers are truncated"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF64 x86-64 header with one program header of type `kind`.
    fn elf_with_program_header(kind: u32) -> Vec<u8> {
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[18..20].copy_from_slice(&62u16.to_le_bytes());
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&kind.to_le_bytes());
        elf
    }

    #[test]
    fn init_must_be_a_static_x86_64_executable() {
        let dir = tempfile::tempdir().unwrap();
        let check = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            check_init_binary(&path).map_err(|e| e.to_string())
        };
        assert_eq!(check("static", &elf_with_program_header(1)), Ok(()));
        let err = check("dynamic", &elf_with_program_header(3)).unwrap_err();
        assert!(err.contains("dynamically linked"), "{err}");
        let err = check("script", b"#!/bin/sh\necho hi\n").unwrap_err();
        assert!(err.contains("not a 64-bit ELF"), "{err}");
        let mut arm = elf_with_program_header(1);
        arm[18] = 183;
        let err = check("arm", &arm).unwrap_err();
        assert!(err.contains("x86-64"), "{err}");
        let err = check("short", &elf_with_program_header(1)[..40]).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        // The host's own shell is dynamically linked.
        let err = check_init_binary(Path::new("/bin/sh"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("dynamically linked"), "{err}");
    }

    #[test]
    fn equal_inputs_give_the_same_archive() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        store.create().unwrap();
        let modules = dir.path().join("modules");
        std::fs::create_dir_all(&modules).unwrap();
        std::fs::write(modules.join("overlay.ko"), b"module").unwrap();
        std::fs::write(modules.join("order"), "overlay.ko\n").unwrap();
        let init = dir.path().join("init");
        std::fs::write(&init, elf_with_program_header(1)).unwrap();

        let first = build(&store, &init, &modules).unwrap();
        let archive = std::fs::read(&first).unwrap();
        assert_eq!(build(&store, &init, &modules).unwrap(), first);
        assert!(archive.starts_with(b"070701"));
        for member in [
            "dev/console",
            "init",
            "lib/modules/overlay.ko",
            "lib/modules/order",
        ] {
            let name = format!("{member}\0");
            assert!(
                archive.windows(name.len()).any(|w| w == name.as_bytes()),
                "{member} is in the archive"
            );
        }
    }
}
