//! Guest images: kernel, initramfs and language packs.
//!
//! Owns building everything a sandbox boots from Debian packages, and the
//! manifest the daemon reads at startup to find the built artefacts. Needs
//! no VMM backend and knows nothing of sandboxes.
//!
//! - [`build`]: the plan of steps, what is reused, the report;
//! - [`kernel`]: the kernel package or file, bzImage and `vmlinux`;
//! - [`initramfs`]: `/init`, the guest's modules, the cpio archive;
//! - [`pack`]: pack definitions, `mmdebstrap` + `mksquashfs`;
//! - [`store`]: input keys, content-addressed blobs, manifest writing, cleanup;
//! - [`manifest`]: the manifest format and reading it.

pub mod build;
pub mod initramfs;
pub mod kernel;
pub mod manifest;
pub mod pack;
mod progress;
pub mod store;
pub mod tool;

pub use build::{build, BuildArgs, BuildReport, ImageError};
#[cfg(any(test, feature = "fake-backend"))]
pub use manifest::fake_manifest;
pub use manifest::{KernelArtefact, Manifest, ManifestError, PackArtefact};
