//! Input that must be refused at once (issue 18, items 13, 18, 19), through
//! the binary on libvirt's test driver: every file read is bounded and
//! typed (a FIFO or /dev/zero is exit 2 naming the file, never a hang or an
//! unbounded read), unsupported URL schemes and malformed URIs are bad
//! input, and `plan` catches an image URL that answers 404. Loopback only.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::http::{Reply, Server};
use common::{wait_within, BIN};

struct Out {
    code: Option<i32>,
    stderr: String,
}

/// Runs project-vm on a fresh test-driver node with `config`, killing it
/// (and failing) if it has not finished within 20 s: a read that blocks is a bug.
fn run(dir: &Path, config: &Path, args: &[&str]) -> Out {
    let mut child = Command::new(BIN)
        .arg("--connect")
        .arg(format!("test://{}", node(dir).display()))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir.join("xdg"))
        .env("XDG_STATE_HOME", dir.join("state"))
        .env("XDG_RUNTIME_DIR", dir.join("run"))
        .env_remove("PROJECT_VM_URI")
        .env_remove("SUDO_USER")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let Some(status) = wait_within(&mut child, Duration::from_secs(20)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("project-vm {args:?} still running after 20 s: a read blocked or grew without bound");
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    Out { code: status.code(), stderr }
}

/// libvirt's test driver, from a node file of the test's own.
fn node(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("node.xml");
    if !p.exists() {
        std::fs::write(&p, "<node><cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads><active>2</active><mhz>2000</mhz></cpu><memory>8388608</memory></node>").unwrap();
    }
    p
}

fn setup(extra: serde_json::Value) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("run")).unwrap();
    let mut settings = serde_json::json!({
        "storage_dir": dir.path().join("pool"),
        "accel": "tcg",
        // The test driver's node file has no libvirt networks.
        "network": {"type": "user", "ssh_port": 22022},
        "ssh_authorized_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOrUuPHcX0EBHf+EB9Nl7gklkDq2TbK6HXAbiUZmjLCk t"],
    });
    for (k, v) in extra.as_object().unwrap() {
        settings[k] = v.clone();
    }
    let cfg = dir.path().join("config.json");
    std::fs::write(&cfg, settings.to_string()).unwrap();
    (dir, cfg)
}

fn fifo(dir: &Path, name: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    p
}

fn refused(out: &Out, file: &str, says: &str) {
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains(file) && out.stderr.contains(says), "wanted {file} and {says:?}: {}", out.stderr);
}

#[test]
fn files_that_are_not_regular_or_too_large_are_refused_naming_them() {
    let (dir, cfg) = setup(serde_json::json!({}));
    let d = dir.path();
    let fifo_path = fifo(d, "pipe");
    let fifo = fifo_path.to_str().unwrap();
    let big = d.join("big.yaml");
    std::fs::write(&big, format!("#cloud-config\n# {}\n", "x".repeat(2 << 20))).unwrap();
    let big = big.to_str().unwrap();

    for (file, says) in [("/dev/zero", "character device"), (fifo, "a FIFO"), (big, "over the limit")] {
        let out = run(d, &cfg, &["create", "x", "--user-data", file]);
        refused(&out, file, says);
    }
    // --config, and a declarative file.
    for (file, says) in [("/dev/zero", "character device"), (fifo, "a FIFO")] {
        let out = run(d, Path::new(file), &["list"]);
        refused(&out, file, says);
        let out = run(d, &cfg, &["plan", "-f", file]);
        refused(&out, file, says);
    }
    let huge = d.join("huge.json");
    std::fs::write(&huge, format!("{{\"vms\": {{}}, \"x\": \"{}\"}}", "y".repeat(5 << 20))).unwrap();
    refused(&run(d, &cfg, &["plan", "-f", huge.to_str().unwrap()]), huge.to_str().unwrap(), "over the limit");
    // A declarative file's user_data.
    let decl = d.join("vms.json");
    std::fs::write(&decl, serde_json::json!({"vms": {"web": {"user_data": fifo}}}).to_string()).unwrap();
    refused(&run(d, &cfg, &["plan", "-f", decl.to_str().unwrap()]), fifo, "a FIFO");
    // image import of a FIFO: refused at once, never a blocked open.
    let out = run(d, &cfg, &["image", "import", fifo, "--name", "p"]);
    refused(&out, fifo, "a FIFO");
    refused(&run(d, &cfg, &["image", "import", "/dev/zero", "--name", "z"]), "/dev/zero", "character device");
}

#[test]
fn key_files_are_bounded_too() {
    // tailscale_auth_key_file
    let (dir, cfg) = setup(serde_json::json!({"tailnet": "example.ts.net", "tailscale_auth_key_file": "/dev/zero"}));
    refused(&run(dir.path(), &cfg, &["create", "x"]), "/dev/zero", "character device");
    // ~/.ssh/*.pub, when the settings name no keys.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(".ssh")).unwrap();
    std::fs::create_dir_all(dir.path().join("run")).unwrap();
    let pubkey = fifo(&dir.path().join(".ssh"), "id_evil.pub");
    let cfg = dir.path().join("config.json");
    let settings = serde_json::json!({"storage_dir": dir.path().join("pool"), "accel": "tcg", "network": {"type": "user", "ssh_port": 22022}});
    std::fs::write(&cfg, settings.to_string()).unwrap();
    refused(&run(dir.path(), &cfg, &["create", "x"]), pubkey.to_str().unwrap(), "a FIFO");
}

#[test]
fn unsupported_schemes_and_malformed_uris_are_bad_input() {
    let (dir, cfg) = setup(serde_json::json!({}));
    let d = dir.path();
    let out = run(d, &cfg, &["image", "pull", "ftp://127.0.0.1/x.qcow2", "--name", "x"]);
    refused(&out, "ftp://127.0.0.1/x.qcow2", "not supported");
    for uri in ["qemu:/system", "not a uri", "qemu+bogus:///system", "qemu:///system?socket=%zz"] {
        let out = Command::new(BIN)
            .args(["--connect", uri, "--config", cfg.to_str().unwrap(), "list"])
            .env("XDG_RUNTIME_DIR", d.join("run"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{uri}: {stderr}");
        assert!(stderr.contains("not a libvirt URI"), "{uri}: {stderr}");
    }
    // A host's "uri" in the settings.
    let (dir, cfg) = setup(serde_json::json!({"hosts": {"a": {"uri": "qemu:/system"}}}));
    let out = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "list"])
        .env_remove("PROJECT_VM_URI")
        .env("XDG_RUNTIME_DIR", dir.path().join("run"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("hosts.a.uri") && stderr.contains("not a libvirt URI"), "{stderr}");
}

#[test]
fn plan_catches_an_image_url_that_answers_404() {
    let srv = Server::start();
    srv.route("/ok/img.qcow2", Reply::Full(b"QFI\xfb\0\0\0\x03".to_vec()));
    let (dir, cfg) = setup(serde_json::json!({}));
    let d = dir.path();
    let file = d.join("vms.json");
    let doc = |image: &str| {
        serde_json::json!({"vms": {"web": {"image": image, "memory": "1G", "cpus": 1, "disk": "2G", "project_disk": "1G"}}})
            .to_string()
    };
    std::fs::write(&file, doc(&srv.url("/gone/img.qcow2"))).unwrap();
    let out = run(d, &cfg, &["plan", "-f", file.to_str().unwrap()]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("answered HTTP 404"), "{}", out.stderr);
    assert_eq!(srv.hits("/gone/img.qcow2"), 1);
    // An `images` entry whose checksum file is gone: the same.
    let (dir2, cfg2) = setup(
        serde_json::json!({"images": {"mine": {"url": srv.url("/ok/img.qcow2"), "checksums": srv.url("/gone/SUMS")}}}),
    );
    let file2 = dir2.path().join("vms.json");
    std::fs::write(&file2, doc("mine")).unwrap();
    let out = run(dir2.path(), &cfg2, &["plan", "-f", file2.to_str().unwrap()]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("/gone/SUMS answered HTTP 404"), "{}", out.stderr);
    // One that answers: planned as a create.
    std::fs::write(&file, doc(&srv.url("/ok/img.qcow2"))).unwrap();
    let out = run(d, &cfg, &["plan", "-f", file.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // A port nobody listens on: plan says it could not check, and goes on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(&file, doc(&format!("http://127.0.0.1:{closed}/img.qcow2"))).unwrap();
    let out = run(d, &cfg, &["plan", "-f", file.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("could not check"), "{}", out.stderr);
}
