//! The guest's readiness reporter (cloud-init/project-vm-ready) run on the
//! host against a made-up `/run/cloud-init`: what it sends on a boot where
//! cloud-init runs, where its generator disabled it, and where it is absent,
//! and that it remembers the instance's first boot. The same line is parsed
//! by `project_vm::ops::ready::Message`, as `start --wait` does.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::KillOnDrop;
use project_vm::ops::ready::{Boot, CloudInitRun, Message};

const SCRIPT: &str = include_str!("../cloud-init/project-vm-ready");

/// Runs the reporter once and returns its first line. `path` is the PATH it
/// sees (so a test decides whether `cloud-init` is installed).
fn report(dir: &Path, path: &str) -> String {
    let port = dir.join("port");
    let _ = std::fs::remove_file(&port);
    let script = dir.join("project-vm-ready");
    std::fs::write(&script, SCRIPT).unwrap();
    let child = Command::new("/bin/sh")
        .arg(&script)
        .env_clear()
        .env("PATH", path)
        .env("PROJECT_VM_READY_PORT", &port)
        .env("PROJECT_VM_READY_RUN", dir.join("run"))
        .env("PROJECT_VM_READY_STATE", dir.join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(child);
    let t0 = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&port) {
            if let Some(line) = text.lines().next().filter(|_| text.contains('\n')) {
                return line.to_owned();
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "the reporter sent nothing in 20 s");
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
