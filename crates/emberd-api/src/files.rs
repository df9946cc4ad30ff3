//! The files API: `/sandboxes/{id}/files…` (see `docs/files.md`).

use serde::{Deserialize, Serialize};

/// Response headers of `GET` and `HEAD …/files?path=`.
pub mod header {
    /// The file's permission bits, in octal ("0644").
    pub const MODE: &str = "x-emberd-mode";
    /// RFC 3339 UTC modification time.
    pub const MTIME: &str = "x-emberd-mtime";
    /// "file", "dir", "symlink" or "other".
    pub const KIND: &str = "x-emberd-kind";
}

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// One entry of `GET …/files/list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileEntry {
    /// The entry's absolute path.
    pub path: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits, in octal ("0755").
    pub mode: String,
    /// RFC 3339 UTC.
    pub mtime: String,
    /// Where a symlink points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
}

/// `GET …/files/list?path=` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileList {
    pub entries: Vec<FileEntry>,
    /// Set when the listing hit its bound on entries and some were left out.
    #[serde(default, skip_serializing_if = "crate::is_false")]
    pub truncated: bool,
}

/// `PUT …/files?path=` 201 body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WriteResult {
    pub path: String,
    /// Bytes written (a file) or unpacked (a tar).
    pub bytes: u64,
    /// Entries unpacked (a tar only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
}
