//! emberd-init: guest PID 1 and agent.
fn main() {}
