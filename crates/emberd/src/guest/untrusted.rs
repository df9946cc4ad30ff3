//! Strings the guest sends, made fit for an API answer or a log line.
//!
//! Everything the guest says is written by code nobody has read: an error
//! message may be 16 MiB long or carry terminal escapes that rewrite an
//! operator's screen or forge log lines. [`guest_text`] is the one place
//! such a string is bounded and cleaned; every guest-supplied string goes
//! through it before it leaves this module.

/// The most bytes of one guest-supplied string the daemon keeps.
pub const GUEST_TEXT_MAX_BYTES: usize = 4 * 1024;

/// Warnings about what a guest said, at most, per second (the rest go to
/// debug): a guest can fail every exec, and must not flood the log.
pub const GUEST_WARNINGS_PER_SECOND: u64 = 5;

/// What replaces a control character.
const REPLACEMENT: char = '\u{FFFD}';
/// Appended to a string that was cut.
const CUT_MARK: &str = "…";

/// `text` cut to at most [`GUEST_TEXT_MAX_BYTES`] (on a char boundary, with
/// a mark when cut) and with every control character other than newline
/// and tab replaced.
pub fn guest_text(text: &str) -> String {
    let cut = text.len() > GUEST_TEXT_MAX_BYTES;
    let mut end = if cut {
        GUEST_TEXT_MAX_BYTES - CUT_MARK.len()
    } else {
        text.len()
    };
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut clean: String = text[..end]
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                REPLACEMENT
            } else {
                c
            }
        })
        .collect();
    // Replacements are wider than what they replace: cut again if needed.
    if clean.len() > GUEST_TEXT_MAX_BYTES - if cut { CUT_MARK.len() } else { 0 } {
        let mut end = GUEST_TEXT_MAX_BYTES - CUT_MARK.len();
        while !clean.is_char_boundary(end) {
            end -= 1;
        }
        clean.truncate(end);
        clean.push_str(CUT_MARK);
    } else if cut {
        clean.push_str(CUT_MARK);
    }
    clean
}

/// [`guest_text`] of bytes that may not be UTF-8.
pub fn guest_bytes(bytes: &[u8]) -> String {
    // Decode no more than can be kept (4 bytes per char at most).
    let head = &bytes[..bytes.len().min(GUEST_TEXT_MAX_BYTES + 4)];
    let text = String::from_utf8_lossy(head);
    if head.len() < bytes.len() {
        // Force the cut mark: the input was longer than what was decoded.
        let mut long = text.into_owned();
        long.push_str(&"x".repeat(GUEST_TEXT_MAX_BYTES));
        guest_text(&long)
    } else {
        guest_text(&text)
    }
}

/// True when a failure the guest caused may be logged at warn level now;
/// false once [`GUEST_WARNINGS_PER_SECOND`] were this second (log at debug).
pub fn guest_warning_allowed() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};
    // The current second in the high bits, warnings in it in the low 16.
    static BUDGET: AtomicU64 = AtomicU64::new(0);
    let second = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut seen = BUDGET.load(Ordering::Relaxed);
    loop {
        let (at, used) = (seen >> 16, seen & 0xffff);
        let (next, allowed) = if at == second {
            (
                seen + u64::from(used < GUEST_WARNINGS_PER_SECOND),
                used < GUEST_WARNINGS_PER_SECOND,
            )
        } else {
            ((second << 16) | 1, true)
        };
        match BUDGET.compare_exchange_weak(seen, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return allowed,
            Err(now) => seen = now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_clean_text_is_kept() {
        assert_eq!(
            guest_text("no such file\n\tline 2"),
            "no such file\n\tline 2"
        );
    }

    #[test]
    fn control_characters_are_replaced() {
        let hostile = "ok\u{1b}[2J\rfake log line\u{0}\u{7f}\u{85}";
        let clean = guest_text(hostile);
        assert!(!clean.chars().any(|c| c.is_control()), "{clean:?}");
        assert!(clean.starts_with("ok\u{FFFD}[2J\u{FFFD}fake log line"));
    }

    #[test]
    fn long_text_is_cut_on_a_char_boundary() {
        for filler in ["a", "é", "日", "🦀", "\u{1b}"] {
            let long = filler.repeat(GUEST_TEXT_MAX_BYTES * 4);
            let clean = guest_text(&long);
            assert!(
                clean.len() <= GUEST_TEXT_MAX_BYTES,
                "{filler}: {}",
                clean.len()
            );
            assert!(clean.ends_with(CUT_MARK), "{filler}");
            assert!(
                clean.len() > GUEST_TEXT_MAX_BYTES / 2,
                "{filler}: too short"
            );
        }
    }

    #[test]
    fn guest_warnings_are_rationed() {
        let allowed = (0..1000).filter(|_| guest_warning_allowed()).count() as u64;
        // At most two seconds' worth, should the loop straddle a second.
        assert!(allowed <= 2 * GUEST_WARNINGS_PER_SECOND, "{allowed}");
        assert!(allowed >= 1);
    }

    #[test]
    fn bytes_are_decoded_bounded_and_cut() {
        let huge = vec![b'y'; 16 * 1024 * 1024];
        let clean = guest_bytes(&huge);
        assert!(clean.len() <= GUEST_TEXT_MAX_BYTES);
        assert!(clean.ends_with(CUT_MARK));
        assert_eq!(guest_bytes(b"bad \xff byte"), "bad \u{FFFD} byte");
    }
}
