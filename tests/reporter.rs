//! The guest's readiness reporter (cloud-init/project-vm-ready) run on the
//! host against a made-up `/run/cloud-init`: what it sends on a boot where
//! cloud-init runs, where its generator disabled it, and where it is absent,
//! and that it remembers the instance's first boot; on the first boot, the
//! application script's result and the checks' (run by the check runner,
//! cloud-init/project-vm-checks), with stage lines before. The same line is parsed
//! by `project_vm::ops::ready::Message`, as `start --wait` does.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::KillOnDrop;
use project_vm::health::{definitions, parse_checks};
use project_vm::ops::ready::{Application, Boot, CloudInitRun, Message, StageLine};

const SCRIPT: &str = include_str!("../cloud-init/project-vm-ready");
const RUNNER: &str = include_str!("../cloud-init/project-vm-checks");

/// Runs the reporter once and returns its first report line. `path` is the
/// PATH it sees (so a test decides whether `cloud-init` is installed).
fn report(dir: &Path, path: &str) -> String {
    sent(dir, path).1
}

/// Runs the reporter until it sends a report: the stage lines before it,
/// and the report line. An application script and check definitions are
/// the guest's if the test wrote `libexec/project-vm-application` and
/// `checks` in `dir`.
fn sent(dir: &Path, path: &str) -> (Vec<StageLine>, String) {
    let port = dir.join("port");
    let _ = std::fs::remove_file(&port);
    let script = dir.join("project-vm-ready");
    std::fs::write(&script, SCRIPT).unwrap();
    let libexec = dir.join("libexec");
    std::fs::create_dir_all(&libexec).unwrap();
    std::fs::write(libexec.join("project-vm-checks"), RUNNER).unwrap();
    let child = Command::new("/bin/sh")
        .arg(&script)
        .env_clear()
        .env("PATH", path)
        .env("PROJECT_VM_READY_PORT", &port)
        .env("PROJECT_VM_READY_RUN", dir.join("run"))
        .env("PROJECT_VM_READY_STATE", dir.join("state"))
        .env("PROJECT_VM_READY_LOG", dir.join("cloud-init.log"))
        .env("PROJECT_VM_READY_LIBEXEC", &libexec)
        .env("PROJECT_VM_READY_CHECKS", dir.join("checks"))
        .env("PROJECT_VM_READY_FEATURES", dir.join("features"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(child);
    let t0 = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&port) {
            let complete = text.lines().take(text.matches('\n').count());
            let (mut stages, mut report) = (Vec::new(), None);
            for line in complete {
                match StageLine::parse(line) {
                    Some(s) => stages.push(s),
                    None if report.is_none() && Message::parse(line).is_some() => report = Some(line.to_owned()),
                    None => {}
                }
            }
            if let Some(line) = report {
                return (stages, line);
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the reporter sent no report in 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A PATH with `cloud-init` on it (a stand-in; the reporter only looks for it).
fn path_with_cloud_init(dir: &Path) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let ci = bin.join("cloud-init");
    std::fs::write(&ci, "#!/bin/sh\nexit 0\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ci, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!("{}:/usr/bin:/bin", bin.display())
}

/// A temporary directory with a made-up `/run/cloud-init` (`run`) holding
/// `files` (name, content).
fn made_up_run(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    for (name, content) in files {
        std::fs::write(run.join(name), content).unwrap();
    }
    (dir, run)
}

#[test]
fn a_boot_where_cloud_init_runs_sends_its_result() {
    let (dir, run) = made_up_run(&[("enabled", "")]);
    std::fs::write(run.join("status.json"), r#"{"v1":{"modules-final":{"errors":[],"finished":38.5}}}"#).unwrap();
    std::fs::write(run.join("result.json"), "{\"v1\":\n{\"datasource\":\"DataSourceNoCloud\",\"errors\":[]}}").unwrap();
    let line = report(dir.path(), &path_with_cloud_init(dir.path()));
    let msg = Message::parse(&line).unwrap_or_else(|| panic!("not a report: {line}"));
    assert_eq!((msg.cloud_init_run(), msg.boot(), msg.result()), (CloudInitRun::Ran, Boot::First, "done"), "{line}");
    assert_eq!(msg.final_finished(), Some(38.5));
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(msg.boot_id, boot_id.trim());

    // The instance's first boot is remembered: a report from another boot is a later one.
    std::fs::write(dir.path().join("state/first-boot-id"), "00000000-0000-0000-0000-000000000000\n").unwrap();
    let msg = Message::parse(&report(dir.path(), &path_with_cloud_init(dir.path()))).unwrap();
    assert_eq!(msg.boot(), Boot::Later);
}

#[test]
fn a_boot_where_cloud_init_waits_reports_once_it_is_done() {
    // Enabled, final stage still running: nothing is sent until result.json appears.
    let (dir, run) = made_up_run(&[("enabled", "")]);
    let writer = {
        let run = run.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            std::fs::write(run.join("status.json"), r#"{"v1":{"modules-final":{"errors":[]}}}"#).unwrap();
            std::fs::write(run.join("result.json"), r#"{"v1":{"errors":["('scripts_user', RuntimeError('x'))"]}}"#)
                .unwrap();
        })
    };
    let t0 = Instant::now();
    let line = report(dir.path(), &path_with_cloud_init(dir.path()));
    writer.join().unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(1400), "sent before cloud-init finished: {line}");
    let msg = Message::parse(&line).unwrap();
    assert_eq!((msg.cloud_init_run(), msg.result()), (CloudInitRun::Ran, "error"), "{line}");
}

#[test]
fn a_boot_where_the_generator_disabled_cloud_init_reports_at_once() {
    let (dir, run) = made_up_run(&[("disabled", "")]);
    // A result left from elsewhere is not this boot's.
    std::fs::write(run.join("result.json"), r#"{"v1":{"errors":["stale"]}}"#).unwrap();
    let t0 = Instant::now();
    let line = report(dir.path(), &path_with_cloud_init(dir.path()));
    assert!(t0.elapsed() < Duration::from_secs(5), "waited for a cloud-init that will not come");
    let msg = Message::parse(&line).unwrap();
    assert_eq!((msg.cloud_init_run(), msg.status_word(), msg.result()), (CloudInitRun::Disabled, "disabled", "done"));
    assert!(msg.result.is_none() && msg.status.is_none(), "{line}");
}

#[test]
fn a_guest_without_cloud_init_reports_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let line = report(dir.path(), "/usr/bin:/bin");
    let msg = Message::parse(&line).unwrap();
    assert_eq!((msg.cloud_init_run(), msg.status_word(), msg.result()), (CloudInitRun::Absent, "absent", "done"));
}

/// A first boot where cloud-init ran and finished: made-up files, with
/// cloud-init's log naming a module.
fn finished_first_boot() -> (tempfile::TempDir, PathBuf) {
    let (dir, run) = made_up_run(&[("enabled", "")]);
    std::fs::write(
        run.join("status.json"),
        "{\"v1\": {\n \"stage\": null,\n \"modules-final\": {\"errors\": [], \"finished\": 38.5}}}",
    )
    .unwrap();
    std::fs::write(run.join("result.json"), r#"{"v1": {"errors": []}}"#).unwrap();
    std::fs::write(
        dir.path().join("cloud-init.log"),
        "2026 - util.py[DEBUG]: Running module scripts_user (<module>) with frequency once-per-instance\n",
    )
    .unwrap();
    (dir, run)
}

fn application(dir: &Path, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("libexec/project-vm-application");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn checks(dir: &Path, list: serde_json::Value) {
    std::fs::write(dir.join("checks"), definitions(&parse_checks("checks", &list).unwrap())).unwrap();
}

#[test]
fn the_first_boot_runs_the_application_then_the_checks_and_reports_both() {
    let (dir, _run) = finished_first_boot();
    application(dir.path(), "#!/bin/sh\necho 'starting \"web\"'\necho done >&2\n");
    checks(
        dir.path(),
        serde_json::json!([
            {"name": "up", "command": "test -x /bin/sh && echo fine", "retries": 0},
            {"name": "soon", "command": format!("test -e {0}/flag || {{ touch {0}/flag; exit 3; }}", dir.path().display()), "retries": 2, "interval": "0s"},
        ]),
    );
    // cloud-init is still in its final stage when the reporter starts.
    let run = dir.path().join("run");
    std::fs::remove_file(run.join("result.json")).unwrap();
    std::fs::write(
        run.join("status.json"),
        "{\"v1\": {\n \"stage\": \"modules-final\",\n \"modules-final\": {\"errors\": []}}}",
    )
    .unwrap();
    // A feature's script runs meanwhile (its path names the feature).
    let features = dir.path().join("features");
    std::fs::create_dir_all(&features).unwrap();
    std::fs::write(features.join("hello"), "sleep 3\n").unwrap();
    let feature = KillOnDrop(Command::new("sh").arg(features.join("hello")).spawn().unwrap());
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(2500));
        std::fs::write(run.join("result.json"), r#"{"v1": {"errors": []}}"#).unwrap();
    });
    let (stages, line) = sent(dir.path(), &path_with_cloud_init(dir.path()));
    writer.join().unwrap();
    drop(feature);
    let msg = Message::parse(&line).unwrap_or_else(|| panic!("not a report: {line}"));
    assert_eq!(msg.application, Some(Application { exit: 0, tail: "starting \"web\"\ndone".into() }), "{line}");
    let results = msg.check_results().expect("checks in the report");
    assert_eq!(
        results.iter().map(|r| (r.name.as_str(), r.ok, r.attempts)).collect::<Vec<_>>(),
        vec![("up", true, 1), ("soon", true, 2)]
    );
    assert_eq!(results[0].output, "fine");
    // Stage lines came first, in order: cloud-init, features, application, each check.
    let names: Vec<String> = stages.iter().map(|s| format!("{} {}", s.stage, s.detail)).collect();
    let at = |s: &str| names.iter().position(|n| n.starts_with(s)).unwrap_or_else(|| panic!("no {s}: {names:?}"));
    assert!(
        names.contains(&"cloud-init modules-final: scripts_user".to_string()),
        "cloud-init's stage and module: {names:?}"
    );
    assert!(
        at("feature hello") < at("features-done")
            && at("features-done") < at("application ")
            && at("application ") < at("application-done exit 0"),
        "{names:?}"
    );
    assert!(at("application-done") < at("check up") && at("check up") < at("check soon"), "{names:?}");

    // The reporter restarted on the same boot: the same results, nothing run again.
    std::fs::write(dir.path().join("libexec/project-vm-application"), "#!/bin/sh\nexit 9\n").unwrap();
    let again = Message::parse(&report(dir.path(), &path_with_cloud_init(dir.path()))).unwrap();
    assert_eq!((again.application.clone(), again.check_results()), (msg.application.clone(), Some(results)));

    // A later boot reports neither (the host runs the checks over ssh then).
    std::fs::write(dir.path().join("state/first-boot-id"), "00000000-0000-0000-0000-000000000000\n").unwrap();
    let later = Message::parse(&report(dir.path(), &path_with_cloud_init(dir.path()))).unwrap();
    assert_eq!((later.boot(), later.application, later.checks), (Boot::Later, None, None));
}

#[test]
fn a_failed_application_script_is_reported_with_its_last_lines_and_skips_the_checks() {
    let (dir, _run) = finished_first_boot();
    let lines: String = (1..=30).map(|i| format!("echo line {i}\n")).collect();
    application(dir.path(), &format!("#!/bin/sh\n{lines}echo 'no such \\ thing' >&2\nexit 3\n"));
    checks(dir.path(), serde_json::json!([{"name": "web", "command": "true"}]));
    let line = report(dir.path(), &path_with_cloud_init(dir.path()));
    let msg = Message::parse(&line).unwrap();
    let app = msg.application.clone().unwrap();
    assert_eq!(app.exit, 3, "{line}");
    let tail: Vec<&str> = app.tail.lines().collect();
    assert_eq!(tail.len(), 20, "the last 20 lines: {tail:?}");
    assert_eq!((tail[0], tail[19]), ("line 12", "no such \\ thing"));
    assert_eq!(msg.checks, None, "checks skipped after a failed application script: {line}");
}

#[test]
fn a_failing_check_is_retried_and_reported_with_its_output() {
    let (dir, _run) = finished_first_boot();
    checks(
        dir.path(),
        serde_json::json!([
            {"name": "web", "command": "echo 'refused: \"8080\"'; exit 7", "retries": 2, "interval": "0s"},
            {"name": "slow", "command": "sleep 5", "timeout": "1s", "retries": 0},
        ]),
    );
    let line = report(dir.path(), &path_with_cloud_init(dir.path()));
    let msg = Message::parse(&line).unwrap();
    assert_eq!(msg.application, None, "no application script: {line}");
    let r = msg.check_results().unwrap();
    assert_eq!((r[0].ok, r[0].exit, r[0].attempts, r[0].output.as_str()), (false, 7, 3, "refused: \"8080\""));
    assert_eq!((r[1].verdict(), r[1].attempts), ("timeout", 1));
    assert!(r[1].elapsed_s >= 0.9 && r[1].elapsed_s < 4.0, "{:?}", r[1]);
}
