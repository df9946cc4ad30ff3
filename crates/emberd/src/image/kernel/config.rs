//! What the guest kernel's build configuration (`boot/config-<release>` in
//! a Debian kernel package) says about Firecracker's clean stop: its
//! `SendCtrlAltDel` reaches the guest through an i8042 keyboard
//! controller, which needs `CONFIG_SERIO_I8042` and `CONFIG_KEYBOARD_ATKBD`.
//! Built in, nothing is needed; as modules, the initramfs loads them;
//! missing, Firecracker's stops fall back to signals (the backend learns
//! that at the first stop). Reads the text only.

/// The options Ctrl-Alt-Del needs, with the module each one builds.
const CTRL_ALT_DEL_OPTIONS: [(&str, &str); 2] = [
    ("CONFIG_SERIO_I8042", "i8042"),
    ("CONFIG_KEYBOARD_ATKBD", "atkbd"),
];

/// How the kernel supports Ctrl-Alt-Del through i8042/atkbd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtrlAltDelSupport {
    BuiltIn,
    /// These modules must be loaded first.
    Modules(Vec<&'static str>),
    /// These options are not set: the guest ignores Ctrl-Alt-Del.
    Missing(Vec<&'static str>),
}

/// Reads a kernel config's text.
pub fn ctrl_alt_del_support(config: &str) -> CtrlAltDelSupport {
    let value = |option: &str| {
        config.lines().find_map(|line| {
            line.trim()
                .strip_prefix(option)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::trim)
        })
    };
    let (mut modules, mut missing) = (Vec::new(), Vec::new());
    for (option, module) in CTRL_ALT_DEL_OPTIONS {
        match value(option) {
            Some("y") => {}
            Some("m") => modules.push(module),
            _ => missing.push(option),
        }
    }
    if !missing.is_empty() {
        CtrlAltDelSupport::Missing(missing)
    } else if !modules.is_empty() {
        CtrlAltDelSupport::Modules(modules)
    } else {
        CtrlAltDelSupport::BuiltIn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_modular_and_missing_keyboards_are_told_apart() {
        let config = |i8042: &str, atkbd: &str| {
            format!("CONFIG_SERIO=y\n{i8042}\nCONFIG_KEYBOARD_ATKBD_X=y\n{atkbd}\n")
        };
        assert_eq!(
            ctrl_alt_del_support(&config("CONFIG_SERIO_I8042=y", "CONFIG_KEYBOARD_ATKBD=y")),
            CtrlAltDelSupport::BuiltIn
        );
        assert_eq!(
            ctrl_alt_del_support(&config("CONFIG_SERIO_I8042=m", "CONFIG_KEYBOARD_ATKBD=m")),
            CtrlAltDelSupport::Modules(vec!["i8042", "atkbd"])
        );
        assert_eq!(
            ctrl_alt_del_support(&config(
                "# CONFIG_SERIO_I8042 is not set",
                "CONFIG_KEYBOARD_ATKBD=m"
            )),
            CtrlAltDelSupport::Missing(vec!["CONFIG_SERIO_I8042"])
        );
    }
}
