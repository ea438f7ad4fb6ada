//! Progress on a terminal, silence when piped or with `--json`; with
//! `--progress`, one event per stage on stderr (a JSON line with `--json`,
//! else a line of text), for logs and programs that drive project-vm.
//!
//! The event schema (one object per line, on stderr):
//! `{"event": "stage", "vm": "web", "stage": "cloud-init", "detail":
//! "modules-final: scripts_user", "elapsed_s": 41.2}`, where `stage` is one
//! of `booting`, `cloud-init` (detail: its stage and module, or `running`),
//! `feature` (detail: the feature whose script runs), `features-done`, `application`, `application-done` (detail: `exit N`),
//! `check` (detail: the check's name), and `elapsed_s` counts from the
//! start of the wait.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

static EVENTS: AtomicBool = AtomicBool::new(false);

/// `--progress`: stage events on stderr where no spinner is shown.
pub fn set_events(on: bool) {
    EVENTS.store(on, Ordering::Relaxed);
}

/// How stage events are written, where there is no spinner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Events {
    None,
    Text,
    Json,
}

pub struct Progress {
    bar: Option<ProgressBar>,
    events: Events,
    t0: Instant,
}

/// A stage in words (`cloud-init modules-final: scripts_user`, `check web`).
pub fn describe(stage: &str, detail: &str) -> String {
    match (stage, detail) {
        ("features-done", _) => "features done".into(),
        ("application", _) => "application script".into(),
        ("application-done", d) => format!("application script done ({d})"),
        (s, "") => s.to_owned(),
        (s, d) => format!("{s} {d}"),
    }
}

/// One stage event as a JSON line (see the module's schema).
pub fn event_line(vm: &str, stage: &str, detail: &str, elapsed: Duration) -> String {
    let elapsed_s = (elapsed.as_secs_f64() * 10.0).round() / 10.0;
    serde_json::json!({ "event": "stage", "vm": vm, "stage": stage, "detail": detail, "elapsed_s": elapsed_s })
        .to_string()
}

impl Progress {
    fn enabled(json: bool) -> bool {
        !json && std::io::stderr().is_terminal()
    }

    pub fn hidden() -> Progress {
        Progress { bar: None, events: Events::None, t0: Instant::now() }
    }

    /// A spinner with a message and elapsed time; with `--progress` where
    /// there is no terminal (or with `--json`), stage events instead.
    pub fn spinner(json: bool, msg: impl Into<String>) -> Progress {
        if !Self::enabled(json) {
            let events = match (EVENTS.load(Ordering::Relaxed), json) {
                (false, _) => Events::None,
                (true, true) => Events::Json,
                (true, false) => Events::Text,
            };
            return Progress { bar: None, events, t0: Instant::now() };
        }
        Progress::spinning(ProgressBar::new_spinner(), msg.into())
    }

    /// The guest reached `stage`: the spinner's message, or an event.
    pub fn stage(&self, vm: &str, stage: &str, detail: &str) {
        let line = match self.events {
            Events::None => return self.set_message(format!("{vm}: {}", describe(stage, detail))),
            Events::Json => event_line(vm, stage, detail, self.t0.elapsed()),
            Events::Text => format!("{vm}: {} [{}s]", describe(stage, detail), self.t0.elapsed().as_secs()),
        };
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }

    /// Styles `bar` as a spinner with a message and elapsed time.
    fn spinning(bar: ProgressBar, msg: String) -> Progress {
        bar.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("template"));
        bar.set_message(msg);
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress { bar: Some(bar), events: Events::None, t0: Instant::now() }
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
        Progress { bar: Some(bar), events: Events::None, t0: Instant::now() }
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
    json: bool,
}

impl Multi {
    pub fn new(json: bool) -> Multi {
        Multi { inner: Progress::enabled(json).then(indicatif::MultiProgress::new), json }
    }

    pub fn spinner(&self, msg: impl Into<String>) -> Progress {
        let Some(m) = &self.inner else { return Progress::spinner(true, msg).events_only(self.json) };
        Progress::spinning(m.add(ProgressBar::new_spinner()), msg.into())
    }
}

impl Progress {
    /// Stage events as `--progress` asks for them with `json` (no spinner).
    fn events_only(mut self, json: bool) -> Progress {
        self.events = match (EVENTS.load(Ordering::Relaxed), json) {
            (false, _) => Events::None,
            (true, true) => Events::Json,
            (true, false) => Events::Text,
        };
        self
    }
}

/// A stage line the guest sends before its report (reporter version 4+):
/// `{"project_vm_stage":1,"stage":"cloud-init","detail":"modules-final: scripts_user"}`.
/// Stages: `cloud-init` (its stage and module), `features-done`,
/// `application`, `application-done` (`exit N`), `check` (its name).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct StageLine {
    pub stage: String,
    #[serde(default)]
    pub detail: String,
}

impl StageLine {
    pub fn parse(line: &str) -> Option<StageLine> {
        let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
        v.get("project_vm_stage")?;
        serde_json::from_value(v).ok()
    }

    /// The stage in words, for the progress line.
    pub fn describe(&self) -> String {
        describe(&self.stage, &self.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_one_json_line_of_the_documented_schema() {
        let line = event_line("web", "cloud-init", "modules-final: scripts_user", Duration::from_millis(41_234));
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"event": "stage", "vm": "web", "stage": "cloud-init", "detail": "modules-final: scripts_user", "elapsed_s": 41.2})
        );
        assert_eq!(describe("check", "health"), "check health");
        assert_eq!(describe("application-done", "exit 3"), "application script done (exit 3)");
        assert_eq!(describe("booting", ""), "booting");
    }
}
