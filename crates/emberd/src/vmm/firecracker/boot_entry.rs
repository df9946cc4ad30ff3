//! Which entry point Firecracker boots a kernel through. Since v1.12 it
//! takes the PVH entry when the ELF `vmlinux` carries Xen's
//! `XEN_ELFNOTE_PHYS32_ENTRY` note (Debian's does), else the 64-bit Linux
//! boot protocol. Reads the ELF's program headers and notes only.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The first release that boots through PVH.
const PVH_SINCE: (u32, u32, u32) = (1, 12, 0);
/// `PT_NOTE`.
const PT_NOTE: u32 = 4;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// The most of a note segment read.
const MAX_NOTES: u64 = 64 * 1024;

/// How a kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// PVH: 32-bit entry named by the ELF note, started in protected mode.
    Pvh,
    /// The 64-bit Linux boot protocol (`startup_64`).
    Linux64,
}

impl std::fmt::Display for BootEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BootEntry::Pvh => "PVH",
            BootEntry::Linux64 => "64-bit Linux boot protocol",
        })
    }
}

/// The entry Firecracker `release` takes into `vmlinux`.
pub fn boot_entry(vmlinux: &Path, release: (u32, u32, u32)) -> std::io::Result<BootEntry> {
    Ok(if release >= PVH_SINCE && has_pvh_note(vmlinux)? {
        BootEntry::Pvh
    } else {
        BootEntry::Linux64
    })
}

/// True when the ELF64 `vmlinux` has a PVH entry note.
pub fn has_pvh_note(vmlinux: &Path) -> std::io::Result<bool> {
    let mut file = std::fs::File::open(vmlinux)?;
    let mut header = [0u8; 64];
    file.read_exact(&mut header)?;
    if &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return Err(std::io::Error::other("not a little-endian ELF64 image"));
    }
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let (phoff, phentsize, phnum) = (
        u64_at(&header, 0x20),
        u64::from(u16_at(&header, 0x36)),
        u16_at(&header, 0x38),
    );
    if phentsize < 56 {
        return Err(std::io::Error::other("ELF program headers too small"));
    }
    for i in 0..u64::from(phnum) {
        let mut ph = [0u8; 56];
        file.seek(SeekFrom::Start(phoff + i * phentsize))?;
        file.read_exact(&mut ph)?;
        if u32_at(&ph, 0) != PT_NOTE {
            continue;
        }
        let (offset, size) = (u64_at(&ph, 8), u64_at(&ph, 32).min(MAX_NOTES));
        let mut notes = vec![0u8; size as usize];
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut notes)?;
        if notes_have(&notes, b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// True when the note list `notes` has a note of `kind` owned by `name`.
fn notes_have(notes: &[u8], name: &[u8], kind: u32) -> bool {
    let align = |n: usize| n.div_ceil(4) * 4;
    let mut at = 0;
    while at + 12 <= notes.len() {
        let word = |i: usize| u32::from_le_bytes(notes[at + i..at + i + 4].try_into().unwrap());
        let (namesz, descsz, note_kind) = (word(0) as usize, word(4) as usize, word(8));
        let name_at = at + 12;
        if name_at + namesz > notes.len() {
            return false;
        }
        if note_kind == kind && &notes[name_at..name_at + namesz] == name {
            return true;
        }
        at = name_at + align(namesz) + align(descsz);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with one PT_NOTE segment holding `notes`.
    fn elf_with_notes(notes: &[u8]) -> Vec<u8> {
        let mut elf = vec![0u8; 64 + 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&PT_NOTE.to_le_bytes());
        elf[72..80].copy_from_slice(&120u64.to_le_bytes());
        elf[96..104].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        elf.extend_from_slice(notes);
        elf
    }

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&kind.to_le_bytes());
        n.extend_from_slice(name);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n.extend_from_slice(desc);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n
    }

    #[test]
    fn the_pvh_note_picks_the_pvh_entry_on_1_12_and_later() {
        let dir = tempfile::tempdir().unwrap();
        let with = dir.path().join("with");
        let mut notes = note(b"Xen\0", 6, b"linux\0");
        notes.extend(note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY, &[0x50, 8, 0, 1]));
        std::fs::write(&with, elf_with_notes(&notes)).unwrap();
        let without = dir.path().join("without");
        std::fs::write(&without, elf_with_notes(&note(b"GNU\0", 18, b"x"))).unwrap();

        assert!(has_pvh_note(&with).unwrap());
        assert!(!has_pvh_note(&without).unwrap());
        assert_eq!(boot_entry(&with, (1, 15, 1)).unwrap(), BootEntry::Pvh);
        assert_eq!(boot_entry(&with, (1, 11, 0)).unwrap(), BootEntry::Linux64);
        assert_eq!(
            boot_entry(&without, (1, 15, 1)).unwrap(),
            BootEntry::Linux64
        );
        std::fs::write(
            &without,
            b"MZ not an elf, long enough to read a header.....................",
        )
        .unwrap();
        assert!(has_pvh_note(&without).is_err());
    }
}
