//! The ELF kernel inside a bzImage, for Firecracker.
//!
//! The setup header says where the compressed payload is; its magic says
//! which decompressor to run.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::image::tool::{self, ToolError};

/// Errors unpacking a bzImage.
#[derive(Debug, thiserror::Error)]
pub enum BzimageError {
    #[error("the kernel file is too short for a bzImage")]
    TooShort,
    #[error("the bzImage payload lies outside the file")]
    PayloadOutside,
    #[error("unknown bzImage compression (magic {0})")]
    UnknownCompression(String),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("cannot run {tool}")]
    Decompressor {
        tool: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} did not unpack an ELF kernel from the bzImage")]
    NotElf(&'static str),
}

/// Decompresses the payload of `bzimage`.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, BzimageError> {
    let field = |at: usize| -> Option<u32> {
        bzimage
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let setup_sects = match bzimage.get(0x1f1) {
        Some(0) | None => 4,
        Some(&n) => usize::from(n),
    };
    let (Some(offset), Some(length)) = (field(0x248), field(0x24c)) else {
        return Err(BzimageError::TooShort);
    };
    let start = (setup_sects + 1) * 512 + offset as usize;
    let payload = bzimage
        .get(start..start + length as usize)
        .ok_or(BzimageError::PayloadOutside)?;
    let (tool, package, args): (&str, &str, &[&str]) = if payload.starts_with(b"\xfd7zXZ\x00") {
        ("xz", "xz-utils", &["-dc", "--single-stream"])
    } else if payload.starts_with(b"\x02\x21\x4c\x18") || payload.starts_with(b"\x04\x22\x4d\x18") {
        ("lz4", "lz4", &["-dc"])
    } else if payload.starts_with(b"\x28\xb5\x2f\xfd") {
        ("zstd", "zstd", &["-dcq"])
    } else if payload.starts_with(b"\x1f\x8b") {
        ("gzip", "gzip", &["-dc"])
    } else {
        return Err(BzimageError::UnknownCompression(hex::encode(
            &payload[..payload.len().min(4)],
        )));
    };
    tool::require(tool, package)?;
    let spawn_error = |source| BzimageError::Decompressor { tool, source };
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(spawn_error)?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let payload = payload.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&payload);
    });
    // The kernel's build appends the decompressed size to the payload, which
    // some decompressors report as trailing garbage: judge by the output.
    let output = child.wait_with_output().map_err(spawn_error)?;
    let _ = feeder.join();
    if !output.stdout.starts_with(b"\x7fELF") {
        return Err(BzimageError::NotElf(tool));
    }
    Ok(output.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal bzImage: setup header fields at their boot-protocol
    /// offsets, and an xz payload after the setup sectors.
    fn fake_bzimage(payload: &[u8], setup_sects: u8, offset: usize) -> Vec<u8> {
        let start = (usize::from(setup_sects) + 1) * 512;
        let mut image = vec![0u8; start + offset];
        image[0x1f1] = setup_sects;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x248..0x24c].copy_from_slice(&(offset as u32).to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        image.extend_from_slice(payload);
        // The kernel build appends the decompressed size after the payload.
        image.extend_from_slice(&[0x10, 0x20, 0, 0]);
        image
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut child = Command::new("xz")
            .args(["-zc", "--check=crc32"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("xz is installed (scripts/install-deps.sh)");
        child.stdin.take().unwrap().write_all(data).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success());
        output.stdout
    }

    #[test]
    fn the_elf_kernel_is_unpacked_from_a_bzimage() {
        let mut elf = b"\x7fELF".to_vec();
        elf.extend((0..100_000u32).map(|i| (i % 251) as u8));
        let image = fake_bzimage(&xz(&elf), 27, 0x3b4);
        assert_eq!(extract_vmlinux(&image).unwrap(), elf);
    }

    #[test]
    fn a_payload_that_is_not_a_kernel_is_refused() {
        let image = fake_bzimage(&xz(b"not a kernel"), 4, 0);
        let err = extract_vmlinux(&image).unwrap_err();
        assert!(err.to_string().contains("did not unpack an ELF"), "{err}");
        let err = extract_vmlinux(&fake_bzimage(b"garbage!", 4, 0)).unwrap_err();
        assert!(
            err.to_string().contains("unknown bzImage compression"),
            "{err}"
        );
        let err = extract_vmlinux(b"short").unwrap_err();
        assert!(err.to_string().contains("too short"), "{err}");
    }
}
