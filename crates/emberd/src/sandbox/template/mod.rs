//! Template snapshots: one warmed-up, quiesced VM image per pack, built
//! from a cold-booted VM ([`build`]) and kept on disk ([`store`]).

mod build;
mod store;

pub(super) use build::build_logged;
pub(super) use store::Templates;
