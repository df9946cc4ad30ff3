//! The unprivileged user VMM processes run as when the daemon is root.
//!
//! Owns the lookup of that user (`emberd-vmm` by default, created by
//! `scripts/install-deps.sh`) and the rule: a root daemon needs it, an
//! unprivileged daemon runs its VMMs as itself. Shared by every backend that
//! drops privileges (QEMU's `-runas`, Firecracker's jailer). Must never
//! accept root as the VMM user.

use nix::unistd::{Gid, Uid, User};

/// The user VMMs are started as by default.
pub const DEFAULT_VMM_USER: &str = "emberd-vmm";

/// A resolved system user for VMM processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Why the VMM user cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum VmmUserError {
    #[error(
        "the VMM user {name:?} does not exist: run `make setup` to create it, or pass --vmm-user with an existing unprivileged user"
    )]
    Missing { name: String },
    #[error("the VMM user {name:?} is root (uid 0); pass --vmm-user with an unprivileged user")]
    Root { name: String },
    #[error("cannot look up the VMM user {name:?}")]
    Lookup {
        name: String,
        #[source]
        source: nix::Error,
    },
}

impl VmmUser {
    /// Looks `name` up in the system's user database.
    pub fn lookup(name: &str) -> Result<Option<VmmUser>, VmmUserError> {
        let user = User::from_name(name).map_err(|source| VmmUserError::Lookup {
            name: name.to_owned(),
            source,
        })?;
        Ok(user.map(|user| VmmUser {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }))
    }

    /// The user VMMs run as for a daemon running as `daemon_uid`: `name`
    /// when the daemon is root (an error when it is missing or is root),
    /// none otherwise (an unprivileged daemon has no one to drop to).
    pub fn for_daemon(daemon_uid: Uid, name: &str) -> Result<Option<VmmUser>, VmmUserError> {
        Self::resolve(daemon_uid, name, Self::lookup)
    }

    /// [`VmmUser::for_daemon`] with the lookup injected.
    fn resolve(
        daemon_uid: Uid,
        name: &str,
        lookup: impl FnOnce(&str) -> Result<Option<VmmUser>, VmmUserError>,
    ) -> Result<Option<VmmUser>, VmmUserError> {
        if !daemon_uid.is_root() {
            return Ok(None);
        }
        match lookup(name)? {
            None => Err(VmmUserError::Missing {
                name: name.to_owned(),
            }),
            Some(user)
                if Uid::from_raw(user.uid).is_root()
                    || Gid::from_raw(user.gid) == Gid::from_raw(0) =>
            {
                Err(VmmUserError::Root {
                    name: name.to_owned(),
                })
            }
            Some(user) => Ok(Some(user)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(uid: u32, gid: u32) -> VmmUser {
        VmmUser {
            name: "emberd-vmm".into(),
            uid,
            gid,
        }
    }

    #[test]
    fn a_root_daemon_runs_vmms_as_the_named_user() {
        let found = VmmUser::resolve(Uid::from_raw(0), "emberd-vmm", |_| Ok(Some(user(999, 995))));
        assert_eq!(found.unwrap(), Some(user(999, 995)));
    }

    #[test]
    fn a_root_daemon_refuses_a_missing_user_and_says_how_to_fix_it() {
        let err = VmmUser::resolve(Uid::from_raw(0), "emberd-vmm", |_| Ok(None)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"emberd-vmm\" does not exist"), "{text}");
        assert!(text.contains("make setup"), "{text}");
        assert!(text.contains("--vmm-user"), "{text}");
    }

    #[test]
    fn root_is_never_a_vmm_user() {
        let err = VmmUser::resolve(Uid::from_raw(0), "root", |_| Ok(Some(user(0, 0)))).unwrap_err();
        assert!(matches!(err, VmmUserError::Root { .. }), "{err}");
        let err = VmmUser::resolve(Uid::from_raw(0), "x", |_| Ok(Some(user(5, 0)))).unwrap_err();
        assert!(matches!(err, VmmUserError::Root { .. }), "{err}");
    }

    #[test]
    fn an_unprivileged_daemon_drops_to_nobody_and_looks_nothing_up() {
        let found = VmmUser::resolve(Uid::from_raw(1000), "emberd-vmm", |_| {
            panic!("looked up a user for an unprivileged daemon")
        });
        assert_eq!(found.unwrap(), None);
    }

    #[test]
    fn lookup_finds_root_and_misses_a_made_up_name() {
        assert_eq!(VmmUser::lookup("root").unwrap().map(|u| u.uid), Some(0));
        assert_eq!(VmmUser::lookup("no-such-user-emberd-x").unwrap(), None);
    }
}
