//! Against libvirt daemons of the tests' own (tests/common/daemon.rs): one
//! that speaks German, so that project-vm's decisions are seen not to hang on
//! libvirt's (translated) words, and one restarted under a `start --wait`, as
//! a package upgrade or `nixos-rebuild switch` restarts the host's daemon.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::daemon::OwnDaemon;
use common::*;

fn image() -> String {
    std::env::var("PROJECT_VM_TEST_IMAGE")
        .expect("PROJECT_VM_TEST_IMAGE is not set: run scripts/test.sh, which builds the image")
}

#[test]
#[ignore = "needs root, libvirtd, libvirt-l10n and the de_DE.UTF-8 locale (scripts/setup-host.sh); run by scripts/test.sh"]
fn a_daemon_speaking_german_gets_the_same_exit_codes_and_hints() {
    require_root_libvirt();
    let d = OwnDaemon::start("pvlocale", "de_DE.UTF-8");
    // The daemon does translate (else this test would test nothing).
    let out = String::from_utf8_lossy(&d.virsh(&["pool-info", "pvtest-no-such-pool"]).stderr).into_owned();
    assert!(out.contains("Speicher-Pool nicht gefunden"), "the daemon does not speak German: {out}");

    // libvirt's own system error, translated: a storage directory the
    // daemon's user may not make is a permission problem, and the hint names
    // that user (not the generic "storage_dir must be ...").
    let mut denied = Env::new(
        "locale-denied",
        22641,
        serde_json::json!({"base_image": "tiny", "storage_dir": "/root/pvtest-locale-denied", "network": {"type": "user", "ssh_port": 22641}}),
    );
    denied.uri = d.uri.clone();
    let tiny = tiny_image(&denied.dir);
    let r = denied.run(&["image", "import", tiny.to_str().unwrap(), "--name", "tiny"]);
    assert_eq!(r.code, 4, "stdout {} stderr {}", r.stdout, r.stderr);
    assert!(r.stderr.contains("Keine Berechtigung"), "libvirt's own words are shown: {}", r.stderr);
    assert!(r.stderr.contains("run as pvlocale"), "the hint names the daemon's user: {}", r.stderr);
    let _ = d.virsh(&["pool-undefine", &denied.pool]);
    denied.cleanup(&[]);

    let pool_dir = d.home.join("pool");
    let mut env = Env::new(
        "locale",
        22640,
        serde_json::json!({"base_image": "tiny", "storage_dir": pool_dir, "network": {"type": "user", "ssh_port": 22640}}),
    );
    env.uri = d.uri.clone();
    let tiny = tiny_image(&env.dir);
    env.run(&["image", "import", tiny.to_str().unwrap(), "--name", "tiny"]).ok();

    // A pool directory the daemon's user may no longer write: qemu-img's
    // refusal inside libvirt's German report is still a permission problem
    // (exit 4, with the hint that names the daemon's user).
    sh(&format!("chmod 0555 {}", pool_dir.display()));
    let r = env.run(&["create", "de1", "1G", "1", "5G", "--project-disk", "1G"]);
    sh(&format!("chmod 0755 {}", pool_dir.display()));
    assert_eq!(r.code, 4, "stdout {} stderr {}", r.stdout, r.stderr);
    assert!(r.stderr.contains("Interner Fehler"), "libvirt's own words are shown: {}", r.stderr);
    assert!(r.stderr.contains("hint:"), "{}", r.stderr);
    let vols = String::from_utf8_lossy(&d.virsh(&["vol-list", &env.pool]).stdout).into_owned();
    assert!(!vols.contains("project-de1"), "a refused create left {vols}");

    // The client side in any language: a socket this user may not open is
    // permission denied (its errno), named so, exit 4.
    let r = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--", "env", "LANG=de_DE.UTF-8", "HOME=/tmp", BIN, "--connect", &d.uri, "list"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("permission denied connecting to libvirt"), "{stderr}");
    let _ = d.virsh(&["pool-destroy", &env.pool]);
    let _ = d.virsh(&["pool-undefine", &env.pool]);
    env.cleanup(&[]);
}

#[test]
#[ignore = "boots a guest; needs root, libvirtd and PROJECT_VM_TEST_IMAGE; run by scripts/test.sh"]
fn start_wait_survives_a_restart_of_the_daemon() {
    require_root_libvirt();
    let img = image();
    let d = OwnDaemon::start("pvrestart", "C.UTF-8");
    let pool_dir = d.home.join("pool");
    let mut env = Env::new(
        "restart",
        22660,
        serde_json::json!({"base_image": "debian", "storage_dir": pool_dir, "network": {"type": "user", "ssh_port": 22660}}),
    );
    env.uri = d.uri.clone();
    env.run(&["image", "import", &img, "--name", "debian"]).ok();
    env.run(&["create", "rs", "1G", "2", "8G", "--project-disk", "1G"]).ok();
    let wait = env
        .cmd(&["start", "rs", "--wait", "--timeout", "600", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Mid-wait: the guest is booting when its daemon goes away and comes back.
    std::thread::sleep(Duration::from_secs(10));
    let qemu = sh(&format!("pgrep -u {} -f qemu-system", d.user));
    assert!(!qemu.trim().is_empty(), "the guest is not running before the restart");
    d.restart();
    let out = wait.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert_eq!(out.status.code(), Some(0), "start --wait across a restart: {stderr}");
    let ready: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ready["ready"]["result"], "done", "{ready}");
    assert!(stderr.contains("reconnecting"), "{stderr}");
    assert_eq!(sh(&format!("pgrep -u {} -f qemu-system", d.user)), qemu, "the guest was restarted");
    // The seed went through the new connection too.
    let vols = String::from_utf8_lossy(&d.virsh(&["vol-list", &env.pool]).stdout).into_owned();
    assert!(!vols.contains("project-rs-seed.iso"), "{vols}");
    assert_eq!(env.ssh("rs", "hostname").trim(), "project-rs");
    env.run(&["destroy", "rs"]).ok();
    let _ = d.virsh(&["pool-destroy", &env.pool]);
    let _ = d.virsh(&["pool-undefine", &env.pool]);
    env.cleanup(&[]);
}
