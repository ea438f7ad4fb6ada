//! Health checks and the application script: what a VM declares
//! (`"checks"`, `"application_script"`), checked at input, and what the
//! guest's check runner (cloud-init/project-vm-checks) reads and writes.
//!
//! The checks run in the guest, by a runner delivered in the seed: on the
//! first boot the guest runs them itself after the application script and
//! reports over the readiness channel; `project-vm check` (and `start
//! --wait` on a later boot) runs the same runner over ssh with the pinned
//! host key, passing the host's current definitions on its stdin. The
//! definitions travel as one line per check ([`Check::wire`]) so the runner
//! is plain sh with no JSON parser.

use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::error::ConfigError;

/// The most bytes of an application script (it travels in the seed).
pub const APPLICATION_SCRIPT_MAX: u64 = 256 << 10;
/// The most bytes of one check's command.
pub const COMMAND_MAX: usize = 4096;
/// The most checks a VM may have.
pub const CHECKS_MAX: usize = 64;
/// The longest a check's timeout or interval may be.
const LONGEST: Duration = Duration::from_secs(3600);
/// The most retries of one check.
pub const RETRIES_MAX: u32 = 1000;

/// Defaults of a check's optional keys.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRIES: u32 = 10;
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

/// Where the seed puts the application script, the runner and the
/// first boot's check definitions in the guest.
pub const APPLICATION_PATH: &str = "/usr/local/libexec/project-vm-application";
pub const RUNNER_PATH: &str = "/usr/local/libexec/project-vm-checks";
pub const DEFINITIONS_PATH: &str = "/etc/project-vm/checks";

/// One health check: a command run in the guest (as root, by `sh -c`),
/// passing when it exits 0 within `timeout`; tried `1 + retries` times,
/// `interval` apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub name: String,
    pub command: String,
    #[serde(default = "default_timeout", with = "secs")]
    pub timeout: Duration,
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_interval", with = "secs")]
    pub interval: Duration,
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}
fn default_retries() -> u32 {
    DEFAULT_RETRIES
}
fn default_interval() -> Duration {
    DEFAULT_INTERVAL
}

/// Durations as `"5s"`, `"2m"` (humantime), or a number of seconds; written
/// back in whole seconds (`"5s"`).
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}s", d.as_secs()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(n) => Ok(Duration::from_secs(n)),
            Raw::Text(t) => humantime::parse_duration(t.trim())
                .map_err(|e| serde::de::Error::custom(format!("{t:?} is not a duration like \"5s\" or \"2m\" ({e})"))),
        }
    }
}

impl Check {
    /// The check's own values: a name the runner and the table can carry, a
    /// command, and bounded times. Each problem names the key.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let name_ok = self.name.len() <= 32
            && self.name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && self.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
        if !name_ok {
            out.push(format!(
                "name: {:?} is not a check name: use 1 to 32 lowercase letters, digits, '-', '_' or '.', starting with a letter or digit (e.g. \"web\")",
                self.name
            ));
        }
        if self.command.trim().is_empty() {
            out.push(
                "command: empty: give the command to run in the guest, e.g. \"curl -fsS localhost:8080/health\"".into(),
            );
        } else if self.command.len() > COMMAND_MAX || self.command.contains('\0') {
            out.push(format!(
                "command: over {COMMAND_MAX} bytes or holds a NUL byte: put a long check in a script the VM has"
            ));
        }
        if self.timeout < Duration::from_secs(1) || self.timeout > LONGEST {
            out.push(format!("timeout: {}s is out of range: give 1s to 1h", self.timeout.as_secs_f64()));
        }
        if self.interval > LONGEST || self.interval.subsec_nanos() != 0 {
            out.push(format!(
                "interval: {}s is out of range: give whole seconds, 0s to 1h",
                self.interval.as_secs_f64()
            ));
        }
        if self.timeout.subsec_nanos() != 0 && out.is_empty() {
            out.push("timeout: give whole seconds".into());
        }
        if self.retries > RETRIES_MAX {
            out.push(format!("retries: {} is above the maximum of {RETRIES_MAX}", self.retries));
        }
        out
    }

    /// The runner's line: `name TAB timeout TAB retries TAB interval TAB
    /// command`, the command as octal escapes (`\ooo`, every byte) so any
    /// command fits on one line and `printf` gives it back in sh.
    pub fn wire(&self) -> String {
        let mut command = String::with_capacity(self.command.len() * 4);
        for b in self.command.bytes() {
            let _ = write!(command, "\\{b:03o}");
        }
        format!("{}\t{}\t{}\t{}\t{command}\n", self.name, self.timeout.as_secs(), self.retries, self.interval.as_secs())
    }

    /// The longest the runner may take over this check.
    pub fn budget(&self) -> Duration {
        (self.timeout + self.interval) * (self.retries + 1)
    }
}

/// The runner's input for `checks`.
pub fn definitions(checks: &[Check]) -> String {
    checks.iter().map(Check::wire).collect()
}

/// Parses and validates a `checks` list (`at`: its JSON path); every
/// problem at once, each with the check's index and key.
pub fn parse_checks(at: &str, v: &serde_json::Value) -> Result<Vec<Check>, Vec<String>> {
    let Some(list) = v.as_array() else {
        return Err(vec![format!(
            "{at}: expected a list of checks like [{{\"name\": \"web\", \"command\": \"curl -fsS localhost:8080/health\"}}]"
        )]);
    };
    let mut problems = Vec::new();
    let mut checks = Vec::new();
    if list.len() > CHECKS_MAX {
        problems.push(format!("{at}: {} checks, over the limit of {CHECKS_MAX}", list.len()));
    }
    for (i, item) in list.iter().enumerate() {
        match serde_json::from_value::<Check>(item.clone()) {
            Ok(c) => {
                problems.extend(c.problems().into_iter().map(|p| format!("{at}[{i}].{p}")));
                if checks.iter().any(|o: &Check| o.name == c.name) {
                    problems.push(format!("{at}[{i}].name: {:?} is given twice: name each check once", c.name));
                }
                checks.push(c);
            }
            Err(e) => problems.push(format!("{at}[{i}]: {e}")),
        }
    }
    if problems.is_empty() {
        Ok(checks)
    } else {
        Err(problems)
    }
}

/// An application script read at input (bounded), as text for the seed.
pub fn load_application_script(path: &std::path::Path) -> anyhow::Result<String> {
    let text = crate::files::read_text(path, "application script", APPLICATION_SCRIPT_MAX)?;
    if text.trim().is_empty() {
        return Err(ConfigError::Value {
            what: format!("application script {}", path.display()),
            why: "the file is empty: give a script that sets up the application".into(),
        }
        .into());
    }
    Ok(text)
}

/// What the runner says of one check (one JSON line per check).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub ok: bool,
    /// The command's last exit status (124: it ran out of time).
    pub exit: i32,
    pub attempts: u32,
    /// Seconds from the first attempt to the verdict (guest clock).
    pub elapsed_s: f64,
    /// The last attempt's output, its end (bounded by the runner).
    #[serde(default)]
    pub output: String,
}

/// The runner's line for one check: `{"project_vm_check":1, "name", "ok",
/// "exit", "attempts", "started", "finished", "output"}`.
#[derive(Deserialize)]
struct RunnerLine {
    name: String,
    ok: bool,
    exit: i32,
    attempts: u32,
    #[serde(default)]
    started: Option<f64>,
    #[serde(default)]
    finished: Option<f64>,
    #[serde(default)]
    elapsed_s: Option<f64>,
    #[serde(default)]
    output: String,
}

impl CheckResult {
    /// One of the runner's lines, or `None` for any other line.
    pub fn parse(line: &str) -> Option<CheckResult> {
        let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
        v.get("project_vm_check")?;
        CheckResult::from_value(v)
    }

    /// A runner line already read as JSON (also inside the ready report).
    pub fn from_value(v: serde_json::Value) -> Option<CheckResult> {
        let r: RunnerLine = serde_json::from_value(v).ok()?;
        let elapsed = match (r.elapsed_s, r.started, r.finished) {
            (Some(e), _, _) => e,
            (None, Some(a), Some(b)) if b >= a => b - a,
            _ => 0.0,
        };
        Some(CheckResult {
            name: r.name,
            ok: r.ok,
            exit: r.exit,
            attempts: r.attempts,
            elapsed_s: (elapsed * 1000.0).round() / 1000.0,
            output: r.output,
        })
    }

    /// The verdict in a word: `pass`, `timeout` (the last attempt ran out of
    /// time) or `fail`.
    pub fn verdict(&self) -> &'static str {
        match (self.ok, self.exit) {
            (true, _) => "pass",
            (false, 124) => "timeout",
            _ => "fail",
        }
    }
}

/// A table of results for people: check, verdict, attempts, time, and the
/// output's last line for a check that did not pass.
pub fn table(results: &[CheckResult]) -> String {
    let width = results.iter().map(|r| r.name.len()).max().unwrap_or(5).max(5);
    let mut out = format!("{:<width$}  {:<7}  {:>8}  {:>8}  DETAIL\n", "CHECK", "RESULT", "ATTEMPTS", "TIME");
    for r in results {
        let detail = match r.ok {
            true => String::new(),
            false => {
                let last = r.output.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
                format!("exit {}{}", r.exit, if last.is_empty() { String::new() } else { format!(": {last}") })
            }
        };
        let time = format!("{:.1}s", r.elapsed_s);
        let _ = writeln!(out, "{:<width$}  {:<7}  {:>8}  {:>8}  {detail}", r.name, r.verdict(), r.attempts, time);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_check_takes_defaults_and_durations_in_either_form() {
        let c =
            parse_checks("checks", &json!([{"name": "web", "command": "curl -fsS localhost:8080/health"}])).unwrap();
        assert_eq!((c[0].timeout, c[0].retries, c[0].interval), (DEFAULT_TIMEOUT, DEFAULT_RETRIES, DEFAULT_INTERVAL));
        let c = parse_checks(
            "checks",
            &json!([{"name": "db", "command": "true", "timeout": "1m", "retries": 0, "interval": 3}]),
        )
        .unwrap();
        assert_eq!((c[0].timeout, c[0].retries, c[0].interval), (Duration::from_secs(60), 0, Duration::from_secs(3)));
        // Written back as it is read.
        let back = serde_json::to_value(&c[0]).unwrap();
        assert_eq!(back, json!({"name": "db", "command": "true", "timeout": "60s", "retries": 0, "interval": "3s"}));
        assert_eq!(serde_json::from_value::<Check>(back).unwrap(), c[0]);
    }

    #[test]
    fn bad_checks_are_named_by_index_and_key() {
        let e = parse_checks(
            "vms.a.checks",
            &json!([
                {"name": "Web!", "command": ""},
                {"name": "x", "command": "true", "timeout": "0s", "interval": "2h", "retries": 5000},
                {"name": "x", "command": "true"},
                {"name": "y", "command": "true", "tiemout": "5s"},
                {"name": "z", "command": "true", "timeout": "soon"},
            ]),
        )
        .unwrap_err();
        let has = |s: &str| assert!(e.iter().any(|p| p.starts_with(s)), "{s}: {e:#?}");
        has("vms.a.checks[0].name: \"Web!\" is not a check name");
        has("vms.a.checks[0].command: empty");
        has("vms.a.checks[1].timeout: 0s is out of range");
        has("vms.a.checks[1].interval: 7200s is out of range");
        has("vms.a.checks[1].retries: 5000 is above the maximum");
        has("vms.a.checks[2].name: \"x\" is given twice");
        has("vms.a.checks[3]: unknown field `tiemout`");
        has("vms.a.checks[4]: \"soon\" is not a duration");
        assert_eq!(parse_checks("checks", &json!({"name": "x"})).unwrap_err().len(), 1);
    }

    #[test]
    fn the_wire_line_carries_any_command_on_one_line() {
        let c = Check {
            name: "web".into(),
            command: "printf 'a\tb\\n' | grep -q \"%s\"\nexit 0".into(),
            timeout: Duration::from_secs(5),
            retries: 2,
            interval: Duration::from_secs(1),
        };
        let line = c.wire();
        assert!(line.starts_with("web\t5\t2\t1\t\\160\\162"), "{line}");
        assert_eq!(line.matches('\n').count(), 1);
        assert!(!line.contains('%') && !line.contains('\''), "only octal escapes: {line}");
        // sh's printf gives the command back byte for byte.
        let field = line.trim_end().rsplit('\t').next().unwrap();
        let out =
            std::process::Command::new("sh").arg("-c").arg("printf \"$1\"").arg("sh").arg(field).output().unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), c.command);
        assert_eq!(c.budget(), Duration::from_secs(18));
    }

    #[test]
    fn runner_lines_parse_and_the_table_says_what_failed() {
        let ok = CheckResult::parse(
            r#"{"project_vm_check":1,"name":"web","ok":true,"exit":0,"attempts":3,"started":10.0,"finished":14.25,"output":"ok"}"#,
        )
        .unwrap();
        assert_eq!((ok.verdict(), ok.elapsed_s, ok.attempts), ("pass", 4.25, 3));
        let bad = CheckResult::parse(
            r#"{"project_vm_check":1,"name":"database","ok":false,"exit":7,"attempts":11,"started":1,"finished":31,"output":"curl: (7) Failed to connect\n"}"#,
        )
        .unwrap();
        assert_eq!(bad.verdict(), "fail");
        let slow = CheckResult { exit: 124, ..bad.clone() };
        assert_eq!(slow.verdict(), "timeout");
        assert!(CheckResult::parse(r#"{"project_vm_stage":1,"stage":"check"}"#).is_none());
        assert!(CheckResult::parse("garbage").is_none());
        let t = table(&[ok, bad]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "CHECK     RESULT   ATTEMPTS      TIME  DETAIL");
        assert_eq!(lines[1].trim_end(), "web       pass            3      4.2s");
        assert_eq!(lines[2], "database  fail           11     30.0s  exit 7: curl: (7) Failed to connect");
    }
}
