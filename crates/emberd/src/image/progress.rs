//! Progress of the build's long steps: a spinner on stderr when it is a
//! terminal, `tracing` events otherwise (logs, CI, `make` into a file).
//!
//! Owns only how progress is shown; the final report is the caller's.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressFinish, ProgressStyle};

/// One running step, shown until [`Progress::finish`] (or cleared when
/// dropped on an error path).
#[derive(Debug)]
pub struct Progress {
    started: Instant,
    spinner: Option<ProgressBar>,
}

impl Progress {
    /// Shows that `what` ("kernel", "pack python") is being built.
    pub fn start(what: &str) -> Self {
        Self::start_on(what, std::io::stderr().is_terminal())
    }

    fn start_on(what: &str, terminal: bool) -> Self {
        let spinner = terminal.then(|| {
            let spinner = ProgressBar::new_spinner()
                .with_style(
                    ProgressStyle::with_template("{spinner} building {msg} [{elapsed}]")
                        .expect("the template is valid"),
                )
                .with_message(what.to_owned())
                .with_finish(ProgressFinish::AndClear);
            spinner.enable_steady_tick(Duration::from_millis(120));
            spinner
        });
        if spinner.is_none() {
            tracing::info!("building {what}");
        }
        Progress {
            started: Instant::now(),
            spinner,
        }
    }

    /// Seconds since the step started.
    pub fn seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Ends the step with a line saying what is ready.
    pub fn finish(self, ready: &str) {
        match self.spinner {
            Some(spinner) => {
                spinner.set_style(
                    ProgressStyle::with_template("{msg}").expect("the template is valid"),
                );
                spinner.finish_with_message(ready.to_owned());
            }
            None => tracing::info!("{ready}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn without_a_terminal_steps_are_tracing_events() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let progress = Progress::start_on("pack shell", false);
            assert!(progress.spinner.is_none());
            progress.finish("pack shell ready in 0.1 s");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].ends_with("building pack shell"), "{text}");
        assert!(lines[1].ends_with("pack shell ready in 0.1 s"), "{text}");
    }
}
