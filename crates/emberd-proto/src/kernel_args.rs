//! The `emberd.*` arguments of the guest kernel's command line: what the
//! host tells the agent before any channel exists. The host writes them with
//! [`KernelArg`]'s `Display`; the agent reads them with [`KernelArg::parse`].
//! The text is part of the protocol: an agent reads what older hosts wrote.

use std::fmt;

/// The prefix every argument meant for the agent carries.
const PREFIX: &str = "emberd.";
const OVERLAY_SIZE: &str = "overlay_size";
const HOSTNAME: &str = "hostname";

/// One kernel argument meant for the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelArg {
    /// Size of the tmpfs that takes the guest's writes over its read-only
    /// root, in MiB (`emberd.overlay_size=<mib>M`).
    OverlaySize { mib: u32 },
    /// The guest's host name from boot until `SetIdentity` sets its own
    /// (`emberd.hostname=<name>`).
    Hostname(String),
}

impl KernelArg {
    /// Reads one word of a kernel command line. `None` when the word is not
    /// an argument for the agent, names an unknown key (a newer host's), or
    /// has a value that does not parse.
    pub fn parse(word: &str) -> Option<KernelArg> {
        let (key, value) = word.strip_prefix(PREFIX)?.split_once('=')?;
        match key {
            OVERLAY_SIZE => {
                let mib = value.strip_suffix('M')?;
                if !mib.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                Some(KernelArg::OverlaySize {
                    mib: mib.parse().ok()?,
                })
            }
            HOSTNAME if !value.is_empty() => Some(KernelArg::Hostname(value.to_owned())),
            _ => None,
        }
    }

    /// Every argument for the agent on `cmdline`, in order.
    pub fn all_in(cmdline: &str) -> impl Iterator<Item = KernelArg> + '_ {
        cmdline.split_whitespace().filter_map(KernelArg::parse)
    }
}

impl fmt::Display for KernelArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelArg::OverlaySize { mib } => write!(f, "{PREFIX}{OVERLAY_SIZE}={mib}M"),
            KernelArg::Hostname(name) => write!(f, "{PREFIX}{HOSTNAME}={name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_host_writes_the_agent_reads_back() {
        let args = [
            KernelArg::OverlaySize { mib: 1 },
            KernelArg::OverlaySize { mib: 256 },
            KernelArg::OverlaySize { mib: u32::MAX },
            KernelArg::Hostname("sb-0123".into()),
        ];
        for arg in args {
            assert_eq!(KernelArg::parse(&arg.to_string()), Some(arg));
        }
    }

    #[test]
    fn the_text_on_the_command_line_stays_as_older_agents_read_it() {
        assert_eq!(
            KernelArg::OverlaySize { mib: 256 }.to_string(),
            "emberd.overlay_size=256M"
        );
        assert_eq!(
            KernelArg::Hostname("box".into()).to_string(),
            "emberd.hostname=box"
        );
    }

    #[test]
    fn the_agent_picks_its_arguments_out_of_a_whole_command_line() {
        let cmdline = "console=ttyS0 reboot=k emberd.future_key=1 emberd.overlay_size=512M \
                       quiet emberd.hostname=box\n";
        assert_eq!(
            KernelArg::all_in(cmdline).collect::<Vec<_>>(),
            [
                KernelArg::OverlaySize { mib: 512 },
                KernelArg::Hostname("box".into())
            ]
        );
    }

    #[test]
    fn malformed_values_are_not_arguments() {
        for word in [
            "emberd.overlay_size=1G",
            "emberd.overlay_size=M",
            "emberd.overlay_size=+5M",
            "emberd.overlay_size=99999999999M",
            "emberd.overlay_size",
            "emberd.hostname=",
            "overlay_size=256M",
        ] {
            assert_eq!(KernelArg::parse(word), None, "{word}");
        }
    }
}
