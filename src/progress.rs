//! Progress on a terminal, silence when piped or with `--json`.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    fn enabled(json: bool) -> bool {
        !json && std::io::stderr().is_terminal()
    }

    pub fn hidden() -> Progress {
        Progress { bar: None }
    }

    /// A spinner with a message and elapsed time.
    pub fn spinner(json: bool, msg: impl Into<String>) -> Progress {
        if !Self::enabled(json) {
            return Progress::hidden();
        }
        Progress::spinning(ProgressBar::new_spinner(), msg.into())
    }

    /// Styles `bar` as a spinner with a message and elapsed time.
    fn spinning(bar: ProgressBar, msg: String) -> Progress {
        bar.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("template"));
        bar.set_message(msg);
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress { bar: Some(bar) }
    }

    /// A byte-count bar for uploads.
    pub fn bytes(json: bool, len: u64, msg: impl Into<String>) -> Progress {
        if !Self::enabled(json) {
            return Progress::hidden();
        }
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} [{elapsed}]")
                .expect("template"),
        );
        bar.set_message(msg.into());
        Progress { bar: Some(bar) }
    }

    pub fn set_message(&self, msg: impl Into<String>) {
        if let Some(b) = &self.bar {
            b.set_message(msg.into());
        }
    }

    pub fn set_position(&self, pos: u64) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
        }
    }

    /// Runs `f` with the line cleared (another bar, or plain output, takes the terminal).
    pub fn suspend<T>(&self, f: impl FnOnce() -> T) -> T {
        match &self.bar {
            Some(b) => b.suspend(f),
            None => f(),
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Several progress lines at once (one per VM in `apply`).
pub struct Multi {
    inner: Option<indicatif::MultiProgress>,
}

impl Multi {
    pub fn new(json: bool) -> Multi {
        Multi { inner: Progress::enabled(json).then(indicatif::MultiProgress::new) }
    }

    pub fn spinner(&self, msg: impl Into<String>) -> Progress {
        let Some(m) = &self.inner else { return Progress::hidden() };
        Progress::spinning(m.add(ProgressBar::new_spinner()), msg.into())
    }
}
