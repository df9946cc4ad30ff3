//! Signal names as the API takes them ("TERM", "SIGTERM", "sigterm", "15").

use crate::sandbox::SandboxError;

const NAMES: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("PWR", 30),
    ("SYS", 31),
];

/// The highest signal number taken (Linux's `SIGRTMAX`).
const MAX_SIGNAL: i32 = 64;

/// The number of signal `name`: a name with or without `SIG` (any case) or
/// a number from 1 to 64.
pub fn parse_signal(name: &str) -> Result<i32, SandboxError> {
    let trimmed = name.trim();
    if let Ok(number) = trimmed.parse::<i32>() {
        if (1..=MAX_SIGNAL).contains(&number) {
            return Ok(number);
        }
    }
    let upper = trimmed.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    NAMES
        .iter()
        .find(|(known, _)| *known == bare)
        .map(|(_, number)| *number)
        .ok_or_else(|| {
            SandboxError::Invalid(format!(
                "unknown signal {:?}: use a name such as TERM, SIGKILL or INT, or a number from 1 to {MAX_SIGNAL}",
                name.chars().take(32).collect::<String>()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_prefixes_are_taken_and_the_rest_refused() {
        for (name, number) in [
            ("TERM", 15),
            ("SIGTERM", 15),
            ("sigterm", 15),
            ("15", 15),
            ("KILL", 9),
            ("SIGINT", 2),
            ("winch", 28),
            ("64", 64),
        ] {
            assert_eq!(parse_signal(name).unwrap(), number, "{name}");
        }
        for bad in ["", "0", "65", "-9", "SIGNOPE", "TERMX", "SIG"] {
            assert!(
                matches!(parse_signal(bad), Err(SandboxError::Invalid(_))),
                "{bad}"
            );
        }
    }
}
