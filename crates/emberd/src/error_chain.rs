//! Renders an error with its causes as one line: "outer: cause: root".
//!
//! Errors keep their causes as `#[source]` and say only their own part;
//! this is the one place that joins them, for API answers and log lines.

use std::error::Error;

/// "outer: cause: root cause"; a cause whose text the line already holds
/// (an error that repeats its source) is skipped.
pub fn render(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("sandbox failed to boot")]
        Boot(#[source] Middle),
        #[error(transparent)]
        Transparent(Middle),
    }

    #[derive(Debug, thiserror::Error)]
    #[error("the VMM exited early")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn causes_are_joined_once_each() {
        let io = || std::io::Error::other("no such file");
        assert_eq!(
            render(&Outer::Boot(Middle(io()))),
            "sandbox failed to boot: the VMM exited early: no such file"
        );
        assert_eq!(
            render(&Outer::Transparent(Middle(io()))),
            "the VMM exited early: no such file"
        );
        assert_eq!(render(&io()), "no such file");
    }
}
