//! The environment every process the agent starts begins with: one-shot
//! execs, the fork server and the spare node alike. An exec's own variables
//! go on top of it.

use std::collections::HashMap;

/// The search path of the guest, for the agent and everything it starts.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The variables a process starts with before the exec's own.
pub fn default_env() -> HashMap<String, String> {
    [
        ("PATH", PATH),
        ("HOME", "/root"),
        ("LANG", "C.UTF-8"),
        ("PYTHONDONTWRITEBYTECODE", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}
