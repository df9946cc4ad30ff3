//! Private data dirs that share the built images of another.

use std::path::Path;

/// The manifest's file name inside a data dir.
const MANIFEST: &str = "manifest.json";
/// The content-addressed images inside a data dir.
const BLOBS: &str = "blobs";

/// Makes `dir` a data dir of its own that boots `images`' built images: the
/// manifest is copied and the blobs are linked. What a daemon writes there
/// (template snapshots) stays in `dir`, so a test may damage it freely.
pub fn share_images(images: &Path, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::copy(images.join(MANIFEST), dir.join(MANIFEST))?;
    std::os::unix::fs::symlink(images.join(BLOBS), dir.join(BLOBS))
}
