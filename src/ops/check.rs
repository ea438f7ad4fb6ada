//! `check`: a VM's health checks, run in the guest over ssh with the pinned
//! host key, and the last results, kept for `status`.
//!
//! The runner (cloud-init/project-vm-checks) is the one the seed delivers;
//! over ssh its text goes on the command line (`sudo -n sh -c RUNNER`) and
//! the host's current definitions on its stdin, so a check edited on the
//! host needs no re-provisioning, and a VM made before checks existed runs
//! them too. Results are kept in the user's state directory
//! (`$XDG_STATE_HOME/project-vm/checks/UUID.json`, by domain uuid): the host
//! owns them, nothing is written into the guest or the domain.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::{Ctx, Error};
use crate::health::{Check, CheckResult};
use crate::libvirt::vms::Vm;
use crate::output::Report;
use crate::progress::Progress;

const RUNNER: &str = include_str!("../../cloud-init/project-vm-checks");
/// The most the runner may print (its lines are bounded; this bounds the whole).
const OUTPUT_MAX: u64 = 1 << 20;
/// The most of ssh's stderr kept for an error.
const STDERR_MAX: u64 = 16 << 10;

/// `check NAME`: each check's result and time; the verdict is exit 9 when
/// one failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckReport {
    pub name: String,
    pub passed: bool,
    pub checks: Vec<CheckResult>,
    /// When they ran (seconds since the epoch, host clock).
    pub at: u64,
}

impl CheckReport {
    pub fn of(name: &str, checks: Vec<CheckResult>) -> CheckReport {
        CheckReport { name: name.to_owned(), passed: checks.iter().all(|c| c.ok), checks, at: super::now_unix() }
    }

    /// Exit 9 naming the checks that failed.
    pub fn check(&self) -> anyhow::Result<()> {
        verdict(&self.name, &self.checks)
    }
}

impl Report for CheckReport {
    fn human(&self, out: &mut dyn Write) -> std::io::Result<()> {
        if self.checks.is_empty() {
            return writeln!(out, "{}: no checks (add \"checks\" to its entry in the declarative file)", self.name);
        }
        out.write_all(crate::health::table(&self.checks).as_bytes())
    }
}

/// Exit 9 (`Error::CheckFailed`) naming each check that did not pass.
pub fn verdict(vm: &str, results: &[CheckResult]) -> anyhow::Result<()> {
    let failed: Vec<&CheckResult> = results.iter().filter(|r| !r.ok).collect();
    if failed.is_empty() {
        return Ok(());
    }
    let details = failed
        .iter()
        .map(|r| {
            let last = r.output.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
            format!("{}: {} after {} attempt(s), exit {}: {last}", r.name, r.verdict(), r.attempts, r.exit)
        })
        .collect();
    let failed = failed.iter().map(|r| r.name.clone()).collect();
    Err(Error::CheckFailed { vm: vm.to_owned(), failed, details }.into())
}

/// `project-vm check NAME`: runs the VM's checks (as recorded) now.
pub fn check(ctx: &Ctx, vm: &Vm, identity: Option<&Path>) -> anyhow::Result<CheckReport> {
    let checks = vm.spec()?.checks;
    if checks.is_empty() {
        return Ok(CheckReport::of(vm.name.as_str(), Vec::new()));
    }
    let progress = Progress::spinner(ctx.json, format!("{}: checks", vm.name));
    let results = run(ctx, vm, &checks, identity, &progress)?;
    progress.finish();
    record(vm, &results);
    Ok(CheckReport::of(vm.name.as_str(), results))
}

/// Runs `checks` in the guest over ssh; each check's result, in order.
pub fn run(
    ctx: &Ctx,
    vm: &Vm,
    checks: &[Check],
    identity: Option<&Path>,
    progress: &Progress,
) -> anyhow::Result<Vec<CheckResult>> {
    let state = vm.state();
    if state != crate::libvirt::vms::State::Running {
        return Err(Error::NotRunning { vm: vm.name.to_string(), state: state.as_str().to_owned() }.into());
    }
    let mut child = ssh_command(ctx, vm, identity)?
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Environment(format!("cannot run ssh: {e}: install the OpenSSH client")))?;
    let defs = crate::health::definitions(checks);
    let mut stdin = child.stdin.take().expect("piped");
    // The definitions are small; a guest that does not read them fails below.
    let _ = stdin.write_all(defs.as_bytes());
    drop(stdin);
    let stderr = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.take(STDERR_MAX).read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    });
    let results = read_results(vm, child.stdout.take().expect("piped"), progress);
    let status = child.wait().map_err(|e| Error::Environment(format!("waiting for ssh: {e}")))?;
    let stderr = err_reader.join().unwrap_or_default();
    finish(vm.name.as_str(), checks, results, status.code(), &stderr)
}

/// ssh to the guest, pinned, batch mode: `sudo -n sh -c RUNNER`.
fn ssh_command(ctx: &Ctx, vm: &Vm, identity: Option<&Path>) -> anyhow::Result<Command> {
    let (target, opts) = super::ssh::prepare(ctx, vm)?;
    let mut cmd = Command::new("ssh");
    for o in opts.iter().map(String::as_str).chain(["BatchMode=yes", "ConnectTimeout=20", "ServerAliveInterval=15"]) {
        cmd.arg("-o").arg(o);
    }
    if let Some(id) = identity {
        cmd.arg("-i").arg(id).arg("-o").arg("IdentitiesOnly=yes");
    }
    let remote = format!("sudo -n sh -c {} project-vm-checks -", shell_words::quote(RUNNER));
    cmd.arg("-p").arg(target.port.to_string()).arg(format!("{}@{}", target.user, target.host)).arg("--").arg(remote);
    cmd.stdin(Stdio::null());
    Ok(cmd)
}

/// The runner's lines: results kept, stage lines shown as progress.
fn read_results(vm: &Vm, stdout: impl Read, progress: &Progress) -> Vec<CheckResult> {
    let mut results = Vec::new();
    for line in BufReader::new(stdout.take(OUTPUT_MAX)).lines().map_while(Result::ok) {
        if let Some(stage) = crate::progress::StageLine::parse(&line) {
            progress.stage(vm.name.as_str(), &stage.stage, &stage.detail);
        } else if let Some(r) = CheckResult::parse(&line) {
            results.push(r);
        }
    }
    results
}

/// The results, or why there are none: ssh failed (255), sudo refused, the
/// runner stopped early.
fn finish(
    vm: &str,
    checks: &[Check],
    results: Vec<CheckResult>,
    code: Option<i32>,
    stderr: &str,
) -> anyhow::Result<Vec<CheckResult>> {
    if results.len() == checks.len() && matches!(code, Some(0 | 1)) {
        return Ok(results);
    }
    let why = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim().to_owned();
    let how = match code {
        Some(255) => "ssh could not reach the guest".to_owned(),
        Some(c) => {
            format!("the check runner exited with status {c} after {} of {} checks", results.len(), checks.len())
        }
        None => "the check runner was killed".to_owned(),
    };
    Err(Error::Environment(format!(
        "cannot run {vm}'s checks: {how}: {why}; see `project-vm ssh {vm} -- sudo -n true`"
    ))
    .into())
}

/// `$XDG_STATE_HOME/project-vm/checks` (default `~/.local/state/...`).
fn results_dir() -> PathBuf {
    let state = crate::paths::state_home_in(crate::settings::invoking_home().as_deref())
        .unwrap_or_else(|| PathBuf::from("/var/lib/project-vm"));
    state.join("project-vm/checks")
}

fn results_path(vm: &Vm) -> Option<PathBuf> {
    let uuid = vm.dom.uuid_string().ok()?;
    Some(results_dir().join(format!("{uuid}.json")))
}

/// Keeps `results` as the VM's last (a failure to write is a warning: the
/// results themselves were reported).
pub fn record(vm: &Vm, results: &[CheckResult]) {
    let Some(path) = results_path(vm) else { return };
    let report = CheckReport::of(vm.name.as_str(), results.to_vec());
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(path.parent().expect("has a parent"))?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&report).expect("json"))?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = write() {
        crate::messages::warn(format_args!("could not keep {}'s check results in {}: {e}", vm.name, path.display()));
    }
}

/// The VM's last results, if any were kept (read bounded; a damaged file is
/// no results).
pub fn last(vm: &Vm) -> Option<CheckReport> {
    let path = results_path(vm)?;
    if !path.exists() {
        return None;
    }
    let bytes = crate::files::read_bounded(&path, "check results", OUTPUT_MAX).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, ok: bool, exit: i32) -> CheckResult {
        CheckResult { name: name.into(), ok, exit, attempts: 3, elapsed_s: 4.0, output: "connection refused\n".into() }
    }

    #[test]
    fn the_verdict_is_exit_9_naming_each_failed_check() {
        assert!(verdict("web", &[result("a", true, 0)]).is_ok());
        assert!(verdict("web", &[]).is_ok());
        let e =
            verdict("web", &[result("up", true, 0), result("health", false, 7), result("db", false, 124)]).unwrap_err();
        assert_eq!(crate::exit::code(&e), 9);
        match e.downcast_ref::<Error>() {
            Some(Error::CheckFailed { vm, failed, details }) => {
                assert_eq!((vm.as_str(), failed.clone()), ("web", vec!["health".to_string(), "db".to_string()]));
                assert_eq!(details[1], "db: timeout after 3 attempt(s), exit 124: connection refused");
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().starts_with("web: 2 health checks failed: health, db\n"), "{e}");
    }

    #[test]
    fn the_report_prints_a_table_or_json() {
        let r = CheckReport::of("web", vec![result("health", false, 7)]);
        let mut out = Vec::new();
        r.human(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("CHECK ") && text.contains("health  fail"), "{text}");
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!((v["name"].as_str(), v["passed"].as_bool()), (Some("web"), Some(false)));
        assert_eq!(v["checks"][0]["exit"], 7);
        assert_eq!(crate::exit::code(&r.check().unwrap_err()), 9);
        let back: CheckReport = serde_json::from_value(v).unwrap();
        assert_eq!(back.checks, r.checks);
    }

    #[test]
    fn the_runner_says_why_it_could_not_run() {
        let checks = crate::health::parse_checks("c", &serde_json::json!([{"name": "a", "command": "true"}])).unwrap();
        let how = |code| finish("web", &checks, Vec::new(), code, "Permission denied (publickey).\n").unwrap_err();
        let e = how(Some(255));
        assert_eq!(crate::exit::code(&e), 4);
        assert!(e.to_string().contains("ssh could not reach the guest: Permission denied (publickey)."), "{e}");
        assert!(how(Some(1)).to_string().contains("exited with status 1 after 0 of 1 checks"));
        let one = vec![result("a", true, 0)];
        assert_eq!(finish("web", &checks, one.clone(), Some(0), "").unwrap(), one);
    }
}
