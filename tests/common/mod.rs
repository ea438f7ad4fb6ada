//! Helpers for the tests that run the `project-vm` binary against a real
//! libvirtd (qemu:///system). Each test gets its own pool in a temporary
//! directory and its own port range, and cleans up after itself even when an
//! assertion fails.
#![allow(dead_code)]

pub mod cleanup;
pub mod daemon;
pub mod driver;
pub mod guest;
pub mod http;

pub use cleanup::Cleanup;
#[allow(unused_imports)]
pub use guest::{guest_boot_lock, test_image, Guest};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_project-vm");

pub fn require_root_libvirt() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root (qemu:///system): run them through scripts/test.sh"
    );
    let ok = Command::new("virsh")
        .args(["-c", "qemu:///system", "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        ok.is_ok_and(|s| s.success()),
        "libvirtd does not answer on qemu:///system: run scripts/setup-host.sh first"
    );
}

pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(out.status.success(), "`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn virsh(args: &[&str]) -> Output {
    Command::new("virsh").arg("-c").arg("qemu:///system").args(args).output().expect("virsh")
}

/// `virsh ARGS` on qemu:///system that must succeed; its stdout.
pub fn virsh_ok(args: &[&str]) -> String {
    let out = virsh(args);
    assert!(out.status.success(), "virsh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether domain `name` is defined on qemu:///system.
pub fn domain_exists(name: &str) -> bool {
    virsh(&["dominfo", name]).status.success()
}

/// One test's world: settings file, pool directory, ssh key, URI.
#[derive(Clone)]
pub struct Env {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub pool: String,
    pub uri: String,
    pub key: PathBuf,
    pub ssh_port: u16,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub ms: u128,
}

impl Run {
    /// What a finished process gave, `ms` after it was started.
    pub fn of(out: &Output, ms: u128) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            ms,
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "failed:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        self
    }

    /// Asserts the exit code, showing both streams when it is another.
    pub fn expect(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "exit code {}, not {code}:\nstdout: {}\nstderr: {}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

/// Runs `cmd` to its end (its output captured), logging `what` with the
/// exit code and the time it took.
pub fn run(cmd: &mut Command, what: &str) -> Run {
    let t0 = Instant::now();
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let run = Run::of(&out, t0.elapsed().as_millis());
    eprintln!("$ {what} -> {} ({} ms)", run.code, run.ms);
    run
}

/// Starts `cmd` with stdin closed, stdout dropped and stderr captured: the
/// shape of the processes a test runs side by side.
pub fn spawn(mut cmd: impl std::borrow::BorrowMut<Command>) -> Child {
    cmd.borrow_mut().stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn")
}

/// [`host_env`] with the tiny image as base image, imported.
pub fn tiny_host(tag: &str, ssh_port: u16, vms: &[&str]) -> (Env, Cleanup) {
    let (env, guard) = host_env(tag, ssh_port, serde_json::json!({"base_image": "tiny"}), vms);
    env.run(&["image", "import", tiny_image(&env.dir).to_str().unwrap()]).ok();
    (env, guard)
}

/// A test on the host's libvirtd: root and libvirtd checked, an env of its
/// own (`extra` merged into its settings) with a guard for it and the VMs `vms`.
pub fn host_env(tag: &str, ssh_port: u16, extra: Value, vms: &[&str]) -> (Env, Cleanup) {
    require_root_libvirt();
    let env = Env::new(tag, ssh_port, extra);
    let guard = Cleanup::of(&env, vms);
    (env, guard)
}

impl Env {
    /// `extra` is merged into the settings JSON.
    pub fn new(tag: &str, ssh_port: u16, extra: Value) -> Env {
        let dir = std::env::temp_dir().join(format!("project-vm-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // The pool directory must be reachable by the qemu user.
        sh(&format!("chmod 0755 {}", dir.display()));
        let key = dir.join("id_ed25519");
        sh(&format!("ssh-keygen -q -t ed25519 -N '' -C project-vm-test -f {}", key.display()));
        let pubkey = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let pool = format!("pvtest-{tag}-{}", std::process::id());
        let mut settings = serde_json::json!({
            "storage_dir": dir.join("pool"),
            "pool": pool,
            "accel": "tcg",
            "network": {"type": "user", "ssh_port": ssh_port},
            "ssh_authorized_keys": [pubkey.trim()],
        });
        for (k, v) in extra.as_object().unwrap() {
            settings[k] = v.clone();
        }
        let config = dir.join("config.json");
        std::fs::write(&config, serde_json::to_string_pretty(&settings).unwrap()).unwrap();
        Env { dir, config, pool, uri: "qemu:///system".into(), key, ssh_port }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args).env("PROJECT_VM_CONFIG", &self.config);
        // An empty URI: none given, as with a fleet of "hosts" in the settings.
        match self.uri.is_empty() {
            true => c.env_remove("PROJECT_VM_URI"),
            false => c.env("PROJECT_VM_URI", &self.uri),
        };
        c.env("PROJECT_VM_SSH_IDENTITY", &self.key).env("XDG_STATE_HOME", self.dir.join("state")).stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        run(&mut self.cmd(args), &format!("project-vm {}", args.join(" ")))
    }

    /// The URI the env's pool is on: its own, or the system daemon's where
    /// it has none (a fleet's hosts).
    pub fn libvirt_uri(&self) -> &str {
        match self.uri.is_empty() {
            true => cleanup::SYSTEM,
            false => &self.uri,
        }
    }

    /// The settings file as JSON.
    pub fn settings(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(&self.config).unwrap()).unwrap()
    }

    /// A copy of the settings with `edit` applied, written to `file` in the
    /// env's directory.
    pub fn settings_with(&self, file: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
        let mut s = self.settings();
        edit(&mut s);
        let path = self.dir.join(file);
        std::fs::write(&path, s.to_string()).unwrap();
        path
    }

    /// `project-vm ssh NAME -- sh -c CMD`, returning stdout.
    pub fn ssh(&self, name: &str, cmd: &str) -> String {
        let r = self.ssh_run(name, cmd);
        assert_eq!(r.code, 0, "ssh {name} `{cmd}` failed: {}", r.stderr);
        r.stdout
    }

    /// `project-vm ssh NAME -- sh -c CMD`, whatever it exits with.
    fn ssh_run(&self, name: &str, cmd: &str) -> Run {
        self.run(&["ssh", name, "--", "sh", "-c", &shell_quote(cmd)])
    }

    /// [`Env::ssh`], for a guest that was just resumed from memory (a revert
    /// of a running VM): while ssh itself cannot reach sshd (exit 255; after
    /// such a revert the first connection was seen reset, and a guest seen
    /// not to answer for over 90 s), it tries again, for at most `limit`.
    pub fn ssh_once_answering(&self, name: &str, cmd: &str, limit: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let r = self.ssh_run(name, cmd);
            if r.code == 0 {
                return r.stdout;
            }
            assert!(r.code == 255 && t0.elapsed() < limit, "ssh {name} `{cmd}` failed: {}", r.stderr);
            eprintln!("ssh {name}: not answering yet ({}); trying again", r.stderr.trim());
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    pub fn volumes(&self) -> Vec<String> {
        let out = virsh(&["vol-list", "--pool", &self.pool]);
        assert!(out.status.success(), "vol-list: {}", String::from_utf8_lossy(&out.stderr));
        // "Name  Path" header, a rule, then one volume per line.
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(2)
            .filter_map(|l| l.split_whitespace().next())
            .map(String::from)
            .collect();
        v.sort();
        v
    }

    /// The pool's volumes other than images (`NAME@GEN.img` and their records).
    pub fn vm_volumes(&self) -> Vec<String> {
        self.volumes().into_iter().filter(|v| !v.contains('@')).collect()
    }

    pub fn pool_dir(&self) -> PathBuf {
        self.dir.join("pool")
    }

    /// Removes the VMs `names`, then the pool and the env's directory, now
    /// (what a [`Cleanup::of`] guard does when dropped).
    pub fn cleanup(&self, names: &[&str]) {
        drop(Cleanup::of(self, names));
    }
}

/// Waits for `child` to end, at most `limit`: its status, or None if it is
/// still running then (the caller kills it, after what else it must undo).
pub fn wait_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if t0.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process of the test's own (a server, a reporter), killed and reaped
/// when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The volumes of image `name` in `env`'s pool (`NAME@GEN.img` and its record).
pub fn image_volumes(env: &Env, name: &str) -> Vec<String> {
    env.volumes().into_iter().filter(|v| v.starts_with(&format!("{name}@"))).collect()
}

/// Quotes for a remote shell (ssh joins its arguments with spaces).
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A small qcow2 to stand in for a base image when no guest has to boot.
pub fn tiny_image(dir: &Path) -> PathBuf {
    let p = dir.join("tiny.qcow2");
    sh(&format!("qemu-img create -q -f qcow2 {} 1G", p.display()));
    p
}

pub fn tail(path: &str, lines: usize) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.lines().rev().take(lines).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n"))
        .unwrap_or_else(|e| format!("({path}: {e})"))
}

/// The lines a child writes to its (piped) stdout, as they come.
pub fn lines_of(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Ctrl-C for a child (SIGINT), and its exit code.
pub fn interrupt(child: &mut Child) -> Option<i32> {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    child.wait().ok().and_then(|s| s.code())
}

/// The `(event, detail)` pairs of `watch --json` lines about `vm`, read
/// until `last` is seen or `within` passes.
pub fn watched(
    lines: &std::sync::mpsc::Receiver<String>,
    vm: &str,
    last: &str,
    within: Duration,
) -> Vec<(String, String)> {
    let mut seen: Vec<(String, String)> = Vec::new();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline && !seen.iter().any(|(e, _)| e == last) {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) {
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert_eq!(v["vm"], vm, "{line}");
            seen.push((v["event"].as_str().unwrap().into(), v["detail"].as_str().unwrap_or_default().into()));
        }
    }
    seen
}

/// True when `order` occurs in `seen`'s events, in that order (others between).
pub fn in_order(seen: &[(String, String)], order: &[&str]) -> bool {
    let mut at = 0;
    for (e, _) in seen {
        if at < order.len() && e == order[at] {
            at += 1;
        }
    }
    at == order.len()
}
