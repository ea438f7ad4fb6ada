//! A plain user's first VM, as that user: no root, no sudo, the user's own
//! session daemon (qemu:///session, which libvirt spawns on first use), and
//! no settings beyond what this machine needs (software emulation, and the
//! test image as base image: there is no internet to fetch one from).
//!
//! The test makes a user of its own (`pvuser23`) with a home and an ssh key,
//! runs project-vm as that user with the environment a login would give
//! (`runuser` then `env -i`), boots a guest, and leaves nothing behind: no
//! domain, volume or pool in the user's session, no daemon, no user.
//! Needs root (to make the user), libvirt and PROJECT_VM_TEST_IMAGE; run by
//! scripts/test.sh with the other guest-booting tests, one guest at a time.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::cleanup::remove_user;
use common::guest::show_tails;
use common::{guest_boot_lock, sh, test_image, Cleanup, Run};

const USER: &str = "pvuser23";
/// Written into the home of a user this test made, so that a later run may
/// remove a user a killed run left, and never anyone else's.
const MARKER: &str = ".project-vm-test-user";

struct TestUser {
    name: &'static str,
    home: PathBuf,
    uid: u32,
    /// Stops the user's processes (its session daemons, all started by
    /// this test), then removes the user and its home.
    _gone: Cleanup,
}

impl TestUser {
    fn create(name: &'static str) -> TestUser {
        let home = PathBuf::from(format!("/home/{name}"));
        if nix::unistd::User::from_name(name).unwrap().is_some() {
            assert!(
                home.join(MARKER).exists(),
                "user {name} exists and was not made by this test: remove it, or run where it does not exist"
            );
            eprintln!("removing user {name}, left by an earlier run");
            remove_user(name);
        }
        sh(&format!("useradd --create-home --home-dir {} --shell /bin/bash --user-group {name}", home.display()));
        let mut gone = Cleanup::new();
        gone.user(name);
        std::fs::write(home.join(MARKER), "made by project-vm's tests/user.rs; removed with the user\n").unwrap();
        let user = TestUser { name, uid: uid_of(name), home, _gone: gone };
        user.run(&["mkdir", "-m", "0700", ".ssh"]).ok();
        user.run(&["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", ".ssh/id_ed25519"]).ok();
        user
    }

    /// `args` as this user, in its home, with what a login gives and nothing
    /// else from our environment.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", self.name, "--", "env", "-i"])
            .arg(format!("HOME={}", self.home.display()))
            .arg(format!("USER={}", self.name))
            .arg(format!("LOGNAME={}", self.name))
            .args(["SHELL=/bin/bash", "PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"])
            .args(args)
            .current_dir(&self.home)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        common::run(&mut self.command(args), &format!("({}) {}", self.name, args.join(" ")))
    }

    fn bin(&self) -> String {
        self.home.join(".local/bin/project-vm").display().to_string()
    }

    /// `project-vm ARGS` as this user.
    fn pv(&self, args: &[&str]) -> Run {
        let bin = self.bin();
        let mut all = vec![bin.as_str()];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// `project-vm ssh NAME -- sh -c CMD`'s stdout.
    fn ssh(&self, vm: &str, cmd: &str) -> String {
        let r = self.pv(&["ssh", vm, "--", "sh", "-c", &common::shell_quote(cmd)]);
        assert_eq!(r.code, 0, "ssh {vm} `{cmd}`: {}", r.stderr);
        r.stdout
    }

    /// `virsh -c qemu:///session ARGS` as this user, its stdout's lines.
    fn virsh(&self, args: &[&str]) -> Vec<String> {
        let mut all = vec!["virsh", "-c", "qemu:///session"];
        all.extend_from_slice(args);
        let r = self.run(&all).ok();
        r.stdout.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
    }
}

fn uid_of(name: &str) -> u32 {
    nix::unistd::User::from_name(name).unwrap().expect("user").uid.as_raw()
}

/// A failing step shows what the guest printed, and libvirt's domain log.
struct Explain<'a> {
    user: &'a TestUser,
    vm: &'a str,
}

impl Drop for Explain<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let domain = format!("project-{}", self.vm);
        let serial = self.user.home.join(format!(".local/state/project-vm/logs/{domain}-serial.log"));
        let qemu = self.user.home.join(format!(".cache/libvirt/qemu/log/{domain}.log"));
        show_tails(&[(&serial.display().to_string(), 80), (&qemu.display().to_string(), 30)]);
        // What project-vm left, so the cleanup below can be judged.
        let _ = self.user.pv(&["destroy", self.vm]);
    }
}

fn output_text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
#[ignore = "boots a guest as a user it makes; needs root, libvirt and PROJECT_VM_TEST_IMAGE; run by scripts/test.sh"]
fn a_plain_user_creates_uses_and_destroys_a_vm_in_its_own_session() {
    assert!(nix::unistd::geteuid().is_root(), "this test makes a user: run it as root (scripts/test.sh)");
    let img = test_image("PROJECT_VM_TEST_IMAGE");
    let _lock = guest_boot_lock();
    let user = TestUser::create(USER);
    // project-vm installed where a user's own install goes.
    let bin = PathBuf::from(user.bin());
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(common::BIN, &bin).unwrap();
    sh(&format!("chown -R {0}:{0} {1}/.local", USER, user.home.display()));
    // The image is read by the user's own project-vm (uploaded through its
    // session daemon): a copy of its own if it cannot read the shared one.
    let base = match user.run(&["test", "-r", &img]).code {
        0 => img.clone(),
        _ => {
            let mine = user.home.join("base.qcow2");
            std::fs::copy(&img, &mine).unwrap();
            sh(&format!("chown {USER}: {}", mine.display()));
            mine.display().to_string()
        }
    };
    // The only settings this machine needs: no KVM (nested KVM is broken
    // here), and no internet for the default image.
    let config_dir = user.home.join(".config/project-vm");
    user.run(&["mkdir", "-p", &config_dir.display().to_string()]).ok();
    let settings = serde_json::json!({"accel": "tcg", "base_image": base});
    let config = config_dir.join("config.json");
    std::fs::write(&config, settings.to_string()).unwrap();
    sh(&format!("chown {USER}: {}", config.display()));
    let _explain = Explain { user: &user, vm: "u23" };

    // doctor: nothing would fail, and it looked at the session's directory as the user.
    let r = user.pv(&["doctor", "--json"]);
    assert_eq!(r.code, 0, "doctor: {}\n{}", r.stdout, r.stderr);
    let report = r.json();
    let pool_path = report["checks"].as_array().unwrap().iter().find(|c| c["check"] == "pool path").unwrap().clone();
    let storage = format!("/home/{USER}/.local/share/project-vm");
    let msg = pool_path["message"].as_str().unwrap();
    assert!(msg.contains(&storage) && msg.contains(USER), "{pool_path}");
    assert_eq!(report["uri"], "qemu:///session");

    // Where a create would fail, doctor fails first, naming the fix: a
    // storage directory the session daemon (running as the user) cannot make.
    let denied = user.home.join("denied.json");
    let denied_settings = serde_json::json!({"accel": "tcg", "base_image": base, "storage_dir": "/var/lib/project-vm-u23", "pool": "u23-denied"});
    std::fs::write(&denied, denied_settings.to_string()).unwrap();
    let denied = denied.display().to_string();
    let r = user.pv(&["--config", &denied, "doctor"]);
    assert_eq!(r.code, 4, "doctor with an unwritable storage_dir: {}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("FAIL  pool path") && r.stdout.contains(&storage), "{}", r.stdout);
    let r = user.pv(&["--config", &denied, "create", "u23d"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("Permission denied") && r.stderr.contains(&format!("running as {USER}")), "{}", r.stderr);
    assert!(user.virsh(&["list", "--all", "--name"]).is_empty(), "a failed create left a domain");

    // Shares: the session runs virtiofsd as the user, unprivileged. A
    // directory the user cannot reach is refused (exit 2), naming it; one of
    // the user's own is refused (exit 4, saying what is missing) where this
    // host cannot run an unprivileged virtiofsd, or made (and removed again).
    let closed = std::env::temp_dir().join(format!("project-vm-u23-closed-{}", std::process::id()));
    std::fs::create_dir(&closed).unwrap();
    sh(&format!("chmod 0700 {}", closed.display()));
    let r = user.pv(&["create", "u23s", "--share", &format!("{}:/mnt/s", closed.display())]);
    let _ = std::fs::remove_dir(&closed);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains(&format!("{USER} cannot read, write and enter {}", closed.display())), "{}", r.stderr);
    user.run(&["mkdir", "shared"]).ok();
    let own = format!("{}/shared:/mnt/s", user.home.display());
    let r = user.pv(&["create", "u23s", "--share", &own]);
    match r.code {
        4 => {
            assert!(r.stderr.contains("virtiofsd") && r.stderr.contains(&format!("running as {USER}")), "{}", r.stderr)
        }
        0 => {
            user.pv(&["destroy", "u23s"]).ok();
        }
        _ => panic!("create with a share of the user's own: {}", r.stderr),
    };
    assert!(user.virsh(&["list", "--all", "--name"]).is_empty(), "a refused create left a domain");

    // create --start --wait: exit 0, with no settings about disks, pools or networks.
    let r = user.pv(&[
        "create",
        "u23",
        "1G",
        "2",
        "8G",
        "--project-disk",
        "1G",
        "--start",
        "--wait",
        "--timeout",
        "900",
        "--json",
    ]);
    assert_eq!(r.code, 0, "create: {}\n{}", r.stdout, r.stderr);
    let created = r.json();
    assert_eq!(created["ready"]["result"], "done", "{created}");
    eprintln!("TIMING user create --start --wait: {:.1} s", created["ready"]["waited_s"].as_f64().unwrap_or(-1.0));
    // Its disks are in the user's data directory, owned by the user.
    let pool_dir = user.home.join(".local/share/project-vm");
    let root = pool_dir.join("project-u23-root.qcow2");
    assert_eq!(std::fs::metadata(&root).unwrap().uid(), user.uid, "{} is not the user's", root.display());
    // The VM and its ssh port are in the user's own session, with user networking.
    assert_eq!(user.virsh(&["list", "--name"]), vec!["project-u23".to_string()]);
    let port = created["create"]["ssh_port"].as_u64().expect("user networking forwards a port");

    // ssh as the user, verified by the key pinned in the user's state directory.
    assert_eq!(user.ssh("u23", "hostname").trim(), "project-u23");
    let mnt = user.ssh("u23", "findmnt -no FSTYPE,LABEL /project");
    assert_eq!(mnt.split_whitespace().collect::<Vec<_>>(), vec!["ext4", "project"], "{mnt}");
    let wrote = user.ssh("u23", "echo kept > /project/by-user && cat /project/by-user && stat -c %U /project/by-user");
    assert_eq!(wrote.split_whitespace().collect::<Vec<_>>(), vec!["kept", "dev"], "{wrote}");
    let kh = user.home.join(".local/state/project-vm/known_hosts");
    let pinned = std::fs::read_to_string(&kh).unwrap();
    assert!(pinned.starts_with("project-u23 ssh-ed25519 "), "{pinned}");
    assert_eq!(std::fs::metadata(&kh).unwrap().uid(), user.uid);

    // The serial log, kept by the user's session in the user's directories.
    let logs = user.pv(&["logs", "u23"]).ok().stdout;
    assert!(
        logs.contains("Cloud-init") && logs.contains("finished"),
        "serial log ends: {:?}",
        logs.lines().rev().take(5).collect::<Vec<_>>()
    );
    let list = user.pv(&["list", "--json"]).ok().json();
    assert_eq!((list[0]["name"].as_str(), list[0]["state"].as_str()), (Some("u23"), Some("running")), "{list}");
    let status = user.pv(&["status", "u23"]).ok().stdout;
    assert!(status.contains(&format!("port {port}")), "{status}");

    // stop, and a second boot.
    let stop = user.pv(&["stop", "u23", "--timeout", "120", "--json"]).ok().json();
    assert_eq!(stop["result"], "graceful", "{stop}");
    let again = user.pv(&["start", "u23", "--wait", "--timeout", "900", "--json"]).ok().json();
    assert_eq!(again["ready"]["result"], "done", "{again}");
    assert_eq!(user.ssh("u23", "cat /project/by-user").trim(), "kept");

    // destroy, then the image: nothing of project-vm's is left in the session.
    user.pv(&["destroy", "u23"]).ok();
    let images = user.pv(&["image", "list", "--json"]).ok().json();
    for i in images.as_array().unwrap() {
        user.pv(&["image", "rm", i["name"].as_str().unwrap()]).ok();
    }
    assert!(user.virsh(&["list", "--all", "--name"]).is_empty(), "domains left");
    assert_eq!(user.virsh(&["vol-list", "project-vm"]).len(), 2, "volumes left (only vol-list's header expected)");
    assert!(
        !user.home.join(".local/state/project-vm/logs/project-u23-serial.log").exists(),
        "destroy keeps the serial log"
    );
    assert!(!std::fs::read_to_string(&kh).unwrap().contains("project-u23"), "destroy keeps the pinned key");
    // The pool itself is project-vm's to make and the user's to drop.
    user.virsh(&["pool-destroy", "project-vm"]);
    user.virsh(&["pool-undefine", "project-vm"]);
    assert!(user.virsh(&["pool-list", "--all", "--name"]).is_empty(), "pools left");
    let r = user.command(&["virsh", "-c", "qemu:///session", "list", "--all"]).output().unwrap();
    assert!(r.status.success(), "{}", output_text(&r));
    assert!(Path::new(&user.home).exists());
}
