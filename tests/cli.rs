//! The binary as a shell sees it: a closed pipe is not a crash.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_project-vm");

/// Runs `args`, reads one line of stdout, closes the pipe, and returns the
/// exit code and stderr.
fn head_1(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    // The reader (and so the pipe's read end) is dropped here.
    let out = child.wait_with_output().unwrap();
    assert!(!first.is_empty(), "no output from {args:?}");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn completions_into_a_closed_pipe_exit_0() {
    // Tens of KB: more than a pipe holds, so the write after the close fails.
    let (code, stderr) = head_1(&["completions", "bash"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_report_into_a_closed_pipe_exits_0() {
    // Doctor against the test driver prints a report of several lines;
    // writing them to a closed pipe must end quietly.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.json");
    std::fs::write(
        &cfg,
        r#"{"accel":"tcg","ssh_authorized_keys":["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOrUuPHcX0EBHf+EB9Nl7gklkDq2TbK6HXAbiUZmjLCk k"],"storage_dir":"/nonexistent/pv"}"#,
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["--connect", "test:///default", "--config", cfg.to_str().unwrap(), "doctor"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // closed before the first write
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

/// The fault-injection hook is a test build's only: with the
/// `fault-injection` feature, `PROJECT_VM_FAULT_AFTER=1` SIGKILLs the process
/// at its first change to libvirt (here: `image import` defining the pool
/// on the test driver); in the default build (a release, the Nix package) the variable
/// does nothing and the command ends on its own.
#[test]
fn the_fault_variable_works_only_in_a_fault_injection_build() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.json");
    std::fs::write(
        &cfg,
        r#"{"accel":"tcg","storage_dir":"/pv-fault-test","pool":"pv-fault","ssh_authorized_keys":["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOrUuPHcX0EBHf+EB9Nl7gklkDq2TbK6HXAbiUZmjLCk k"]}"#,
    )
    .unwrap();
    // A qcow2 header with no backing file: a small image `image import` accepts.
    let image = dir.path().join("tiny.qcow2");
    let mut header = vec![0u8; 512];
    header[..4].copy_from_slice(b"QFI\xfb");
    header[7] = 3; // version 3
    header[20..24].copy_from_slice(&16u32.to_be_bytes()); // cluster bits
    header[24..32].copy_from_slice(&(1u64 << 20).to_be_bytes()); // virtual size
    header[100..104].copy_from_slice(&104u32.to_be_bytes()); // header length
    std::fs::write(&image, header).unwrap();
    let out = Command::new(BIN)
        .args(["--connect", "test:///default", "--config", cfg.to_str().unwrap()])
        .args(["image", "import", image.to_str().unwrap(), "--name", "b"])
        .env("PROJECT_VM_FAULT_AFTER", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if cfg!(feature = "fault-injection") {
        assert_eq!(out.status.signal(), Some(9), "the hook did not fire: {stderr}");
    } else {
        assert_eq!(out.status.signal(), None, "the default build obeyed PROJECT_VM_FAULT_AFTER: {stderr}");
        assert!(out.status.code().is_some(), "{stderr}");
        assert!(!stderr.contains("fault injection"), "{stderr}");
    }
}

/// `watch` prints only to stdout. With nobody to read it, it must end, not
/// run until a signal: a closed or read-only stdout (or /dev/null, which Rust's runtime
/// puts in its place) is refused at once, exit 2; a pipe whose reader goes
/// away while no event comes ends it within a second or two, exit 0.
#[test]
fn watch_with_nobody_reading_ends() {
    let watch = |stdout: Stdio| {
        Command::new(BIN)
            .args(["--connect", "test:///default", "watch"])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let wait = |mut child: std::process::Child| {
        let t0 = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t0.elapsed() > std::time::Duration::from_secs(20) {
                let _ = child.kill();
                panic!("watch still runs after 20 s with nobody reading");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = wait(watch(Stdio::null()));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("stdout, which is closed, /dev/null or read-only"), "{stderr}");

    // Open for reading only: every write would fail unseen.
    let read_only = std::fs::File::open(BIN).unwrap();
    let (code, stderr) = wait(watch(Stdio::from(read_only)));
    assert_eq!(code, Some(2), "{stderr}");

    let mut child = watch(Stdio::piped());
    // Its first words on stderr: it is watching (and blocked for events).
    let mut line = String::new();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    err.read_line(&mut line).unwrap();
    assert!(line.contains("watching"), "{line}");
    drop(child.stdout.take());
    let (code, _) = wait(child);
    assert_eq!(code, Some(0));
}
