//! Template snapshots: one warmed-up, quiesced VM image per pack, built
//! from a cold-booted VM ([`build`]), kept on disk ([`store`]) with a
//! checksum of its files ([`integrity`]) and removed, when corrupt, only
//! once no restore reads it ([`lease`]); builds of all daemons sharing a
//! data dir take turns ([`lock`]). A template's key includes the host it
//! runs on ([`host`]); a pack whose restores fail on an intact template is
//! given up for the daemon's lifetime ([`give_up`]).

mod build;
mod give_up;
mod host;
mod integrity;
mod lease;
mod lock;
mod store;

pub(super) use build::build_logged;
pub(super) use host::host_fingerprint;
pub(super) use lease::Lease;
pub(super) use store::Templates;
