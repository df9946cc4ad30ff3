//! Guest images: kernel, initramfs and language packs.
//!
//! Owns building everything a sandbox boots from Debian packages, and the
//! manifest the daemon reads at startup to find the built artefacts.

pub mod build;
pub mod cpio;
pub mod manifest;
pub mod modules;

pub use build::{build, BuildArgs, BuildReport, ImageError};
pub use manifest::{KernelArtefact, Manifest, ManifestError, PackArtefact};
