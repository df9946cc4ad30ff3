//! Picks the pre-started interpreter an exec runs on, when one fits: ready,
//! able to run as the exec's user, and not changed by the exec's environment.
//! Never picked for a terminal exec (the caller decides that).

use std::path::Path;

use emberd_proto::v1::ExecStart;
use emberd_proto::warm::WarmLanguage;

use crate::cgroup::ExecCgroup;
use crate::exec::ExecEnv;
use crate::user::{User, SANDBOX_MAX_PROCESSES};
use crate::warm::WarmChild;

/// The exec's process from the pre-started interpreter of
/// `start.warm_language`, when there is one, it can run as the exec's user,
/// and the exec's environment does not change how that interpreter starts
/// up (which it already has). `as_user` is `None` when the agent does not
/// switch users.
pub async fn warm_child(
    env: &ExecEnv,
    start: &ExecStart,
    file: &Path,
    cwd: &Path,
    vars: &std::collections::HashMap<String, String>,
    as_user: Option<User>,
    cgroup: Option<&ExecCgroup>,
) -> Option<WarmChild> {
    // Variables an interpreter reads as it starts, which the pre-started one
    // has done already.
    let language = WarmLanguage::from_wire(&start.warm_language)?;
    let startup_prefixes: &[&str] = match language {
        WarmLanguage::Python => &["PYTHON"],
        WarmLanguage::Node => &["NODE_", "UV_"],
    };
    if start
        .env
        .keys()
        .any(|key| startup_prefixes.iter().any(|p| key.starts_with(p)))
    {
        return None;
    }
    let launched = match language {
        WarmLanguage::Python => {
            let python = env.python.as_ref().filter(|p| p.ready())?;
            let request = crate::warm::Request {
                path: file,
                cwd,
                env: vars,
                ids: as_user.and_then(User::ids),
                cgroup_procs: cgroup.map(ExecCgroup::procs_path),
                max_processes: as_user.and_then(User::ids).map(|_| SANDBOX_MAX_PROCESSES),
            };
            python.launch(&request).await
        }
        WarmLanguage::Node => {
            // The spare already runs as the sandbox user: root goes one-shot.
            if as_user.is_some_and(|user| user != User::Sandbox) {
                return None;
            }
            let node = env.node.as_ref().filter(|n| n.has_spare())?;
            node.launch(file, cwd, vars, cgroup).await
        }
    };
    launched
        .inspect_err(|e| {
            eprintln!("emberd-init: warm {language} unavailable ({e}); running one-shot")
        })
        .ok()
}
