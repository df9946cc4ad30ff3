//! Template snapshots: one warmed-up, quiesced VM image per pack, built
//! from a cold-booted VM ([`build`]), kept on disk ([`store`]) with a
//! checksum of its files ([`integrity`]) and removed, when corrupt, only
//! once no restore reads it ([`lease`]); builds of all daemons sharing a
//! data dir take turns ([`lock`]).

mod build;
mod integrity;
mod lease;
mod lock;
mod store;

pub(super) use build::build_logged;
pub(super) use lease::Lease;
pub(super) use store::Templates;
