//! emberd's Firecracker path against fake-firecracker, which validates
//! every API call against Firecracker's spec and runs the real agent as the
//! guest.

mod daemon;
mod fake;
mod give_up;
mod jailer;
mod strict;
mod support;
mod vmm;
