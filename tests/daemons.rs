//! Against libvirt daemons of the tests' own (tests/common/daemon.rs): one
//! that speaks German, so that project-vm's decisions are seen not to hang on
//! libvirt's (translated) words, and one restarted under a `start --wait`, as
//! a package upgrade or `nixos-rebuild switch` restarts the host's daemon.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::daemon::OwnDaemon;
use common::*;

/// An env of the test's own on daemon `d` (pool in `storage_dir`, user
/// networking on `port`), with a guard for it and the VMs `vms`.
fn env_on(
    d: &OwnDaemon,
    tag: &str,
    port: u16,
    base_image: &str,
    storage_dir: impl serde::Serialize,
    vms: &[&str],
) -> (Env, Cleanup) {
    let settings = serde_json::json!({"base_image": base_image, "storage_dir": storage_dir, "network": {"type": "user", "ssh_port": port}});
    let mut env = Env::new(tag, port, settings);
    env.uri = d.uri.clone();
    let guard = Cleanup::of(&env, vms);
    (env, guard)
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
    let (denied, denied_guard) = env_on(&d, "locale-denied", 22641, "tiny", "/root/pvtest-locale-denied", &[]);
    let tiny = tiny_image(&denied.dir);
    let r = denied.run(&["image", "import", tiny.to_str().unwrap(), "--name", "tiny"]);
    assert_eq!(r.code, 4, "stdout {} stderr {}", r.stdout, r.stderr);
    assert!(r.stderr.contains("Keine Berechtigung"), "libvirt's own words are shown: {}", r.stderr);
    assert!(r.stderr.contains("run as pvlocale"), "the hint names the daemon's user: {}", r.stderr);
    drop(denied_guard);

    let pool_dir = d.home.join("pool");
    let (env, _c) = env_on(&d, "locale", 22640, "tiny", &pool_dir, &[]);
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
}

#[test]
#[ignore = "boots a guest; needs root, libvirtd and PROJECT_VM_TEST_IMAGE; run by scripts/test.sh"]
fn start_wait_survives_a_restart_of_the_daemon() {
    require_root_libvirt();
    let img = test_image("PROJECT_VM_TEST_IMAGE");
    let _lock = guest_boot_lock();
    let d = OwnDaemon::start("pvrestart", "C.UTF-8");
    let pool_dir = d.home.join("pool");
    let (env, _c) = env_on(&d, "restart", 22660, "debian", &pool_dir, &["rs"]);
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
}

/// Two uploads that each fit into a pool but not together: one is stored and
/// the other refused before a byte is streamed (exit 4), and the daemon keeps
/// answering. (Found by a hostile pass: both started, the stream ran the pool
/// full and the daemon died.) On a daemon of the test's own, with its pool on
/// a small tmpfs of the test's own: never the host's daemon.
#[test]
#[ignore = "needs root and libvirtd (scripts/setup-host.sh); run by scripts/test.sh"]
fn concurrent_uploads_never_overfill_a_pool() {
    require_root_libvirt();
    let d = OwnDaemon::start("pvspace", "C.UTF-8");
    let pool_dir = d.home.join("pool");
    std::fs::create_dir_all(&pool_dir).unwrap();
    let mut mount = Cleanup::new();
    mount.unmount(&pool_dir);
    sh(&format!("mount -t tmpfs -o size=64M,mode=0755 tmpfs {}", pool_dir.display()));
    sh(&format!("chown {u}:{u} {}", pool_dir.display(), u = d.user));
    let (env, _c_env) = env_on(&d, "space", 22680, "a", &pool_dir, &[]);
    // Two 36 MiB raw disks with a partition table each: either fits, both do not.
    for n in ["a", "b"] {
        let p = env.dir.join(format!("{n}.raw"));
        sh(&format!(
            "head -c 37748736 /dev/urandom > {p} && echo 'start=2048, type=83' | sfdisk -q {p}",
            p = p.display()
        ));
    }
    let pid = d.pid();
    for round in 0..6 {
        let spawn = |n: &str| {
            spawn(env.cmd(&["image", "import", env.dir.join(format!("{n}.raw")).to_str().unwrap(), "--name", n]))
        };
        let (a, b) = (spawn("a"), spawn("b"));
        let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
        let codes: Vec<i32> = outs.iter().map(|o| o.status.code().unwrap_or(-1)).collect();
        let stderr: Vec<String> = outs.iter().map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).collect();
        let mut sorted = codes.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 4], "round {round}: {codes:?} {stderr:?}");
        let loser = &stderr[codes.iter().position(|c| *c == 4).unwrap()];
        assert!(loser.contains("not enough space") && loser.contains("nothing was uploaded"), "{loser}");
        assert_eq!(d.pid(), pid, "round {round}: the daemon was replaced");
        let vols = String::from_utf8_lossy(&d.virsh(&["vol-list", &env.pool]).stdout).into_owned();
        assert_eq!(
            vols.lines().filter(|l| l.contains(".img")).count(),
            1,
            "round {round}: one image and nothing half-made: {vols}"
        );
        let kept = if codes[0] == 0 { "a" } else { "b" };
        env.run(&["image", "rm", kept]).ok();
    }
}
