//! Guest images: kernel, initramfs and language packs.
//!
//! Owns building everything a sandbox boots from Debian packages, and the
//! manifest the daemon reads at startup to find the built artefacts.

pub mod manifest;

pub use manifest::{KernelArtefact, Manifest, ManifestError, PackArtefact};
