//! The boundary holds (issue 18), on a real libvirtd: shares cannot reach
//! the host's secrets or the pool, files others could plant are refused,
//! markers cannot be forged, gc and apply never reach what project-vm did
//! not make or what lives elsewhere, locks follow the daemon rather than
//! its URI's spelling, and interrupted first uses converge. No guest boots
//! here: every VM is created and destroyed, never started.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use common::*;
use serde_json::json;

/// The volumes of a whole VM called `name`.
fn whole(name: &str) -> Vec<String> {
    ["data.qcow2", "root.qcow2", "seed.iso"].iter().map(|v| format!("project-{name}-{v}")).collect()
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o7777
}

/// Runs project-vm with the fault hook; true when the hook killed it.
fn killed_after(env: &Env, n: usize, args: &[&str]) -> bool {
    use std::os::unix::process::ExitStatusExt;
    let out = env.cmd(args).env("PROJECT_VM_FAULT_AFTER", n.to_string()).output().unwrap();
    out.status.signal() == Some(9)
}

// Item 2: shares.

#[test]
#[ignore = "needs root and libvirtd on qemu:///system; run by scripts/test.sh"]
fn shares_never_reach_host_secrets_the_pool_or_guest_system_paths() {
    let (env, _c) = tiny_host("own18-share", 22700, &["o18s"]);
    let data = env.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let to_etc = env.dir.join("to-etc");
    std::os::unix::fs::symlink("/etc", &to_etc).unwrap();
    let to_pool = env.dir.join("to-pool");
    std::os::unix::fs::symlink(env.pool_dir(), &to_pool).unwrap();
    let pool_dir = env.pool_dir();
    let (d, p, e, tp) = (data.display(), pool_dir.display(), to_etc.display(), to_pool.display());
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["/:/mnt/host".into()], "whole filesystem"),
        (vec![format!("{p}:/mnt/pool")], "storage pool directory"),
        (vec![format!("{}:/mnt/above", env.dir.display())], "storage pool directory"),
        (vec![format!("{p}/sub:/mnt/below")], "storage pool directory"),
        (vec![format!("{e}:/mnt/etc")], "/etc"),
        (vec![format!("{tp}:/mnt/pool")], "storage pool directory"),
        (vec!["/var/lib/libvirt:/mnt/x".into()], "/var/lib"),
        (vec!["/etc/libvirt:/mnt/x".into()], "/etc"),
        (vec!["/root:/mnt/x".into()], "/root"),
        (vec![format!("{d}:/project")], "/project"),
        (vec![format!("{d}:/project/x")], "/project"),
        (vec![format!("{d}:/mnt/../project")], "clean path"),
        (vec![format!("{d}:/mnt//x")], "clean path"),
        (vec![format!("{d}:mnt")], "absolute"),
        (vec![format!("{d}:/etc")], "/etc"),
        (vec![format!("{d}:/usr/bin")], "/usr"),
        (vec![format!("{d}:/home")], "/home itself"),
        (vec![format!("{d}:/home/dev")], "home of the ssh user"),
        (vec![format!("{d}:/mnt/a"), format!("{d}:/mnt/a")], "two shares mount at /mnt/a"),
    ];
    for (shares, why) in &cases {
        let mut args = vec!["create", "o18s", "1G", "1", "5G"];
        for s in shares {
            args.extend(["--share", s.as_str()]);
        }
        let r = env.run(&args);
        assert_eq!(r.code, 2, "{shares:?} was not refused: {}", r.stderr);
        assert!(r.stderr.contains(why), "{shares:?}: expected {why:?} in: {}", r.stderr);
        assert!(r.stderr.contains("share "), "{shares:?}: the message names the share: {}", r.stderr);
        assert!(!domain_exists("project-o18s"), "{shares:?}: a domain was defined");
        assert_eq!(env.vm_volumes(), Vec::<String>::new(), "{shares:?}");
    }

    // The same through a declarative file: plan and apply refuse, for a new
    // VM and for a share added to an existing one.
    let file = env.dir.join("vms.json");
    let write = |shares: serde_json::Value| {
        let doc =
            json!({"vms": {"o18s": {"memory": "1G", "cpus": 1, "disk": "5G", "project_disk": "1G", "shares": shares}}});
        std::fs::write(&file, doc.to_string()).unwrap();
    };
    let f = file.to_str().unwrap();
    for shares in [
        json!([{"source": env.pool_dir(), "target": "/mnt/pool"}]),
        json!([{"source": to_etc, "target": "/mnt/x"}]),
        json!([{"source": data, "target": "/project"}]),
        json!([{"source": "/", "target": "/mnt/host"}]),
    ] {
        write(shares.clone());
        for verb in ["plan", "apply"] {
            let r = env.run(&[verb, "-f", f]);
            assert_eq!(r.code, 2, "{verb} {shares}: {} {}", r.stdout, r.stderr);
            assert!(r.stderr.contains("share "), "{verb} {shares}: {}", r.stderr);
        }
        assert!(!domain_exists("project-o18s"));
    }
    write(json!([]));
    env.run(&["apply", "-f", f]).ok();
    let before = String::from_utf8(virsh(&["dumpxml", "--inactive", "project-o18s"]).stdout).unwrap();
    write(json!([{"source": to_pool, "target": "/mnt/pool"}]));
    let r = env.run(&["apply", "-f", f]);
    assert_eq!(r.code, 2, "a share added to an existing VM: {} {}", r.stdout, r.stderr);
    let after = String::from_utf8(virsh(&["dumpxml", "--inactive", "project-o18s"]).stdout).unwrap();
    assert_eq!(before, after, "the refused share reached the definition");
    assert!(!after.contains("<filesystem"), "{after}");
}

// Item 3: files others can read or plant.

#[test]
#[ignore = "needs root and libvirtd on qemu:///system; run by scripts/test.sh"]
fn guest_data_volumes_are_private_files() {
    let (env, _c) = tiny_host("own18-mode", 22710, &["o18mode"]);
    env.run(&["create", "o18mode", "1G", "1", "5G", "--project-disk", "1G"]).ok();
    for v in whole("o18mode") {
        assert_eq!(mode(&env.pool_dir().join(&v)), 0o600, "{v}");
    }
    env.run(&["destroy", "o18mode", "--keep-data"]).ok();
    for v in ["project-o18mode-data.qcow2".to_string(), "project-o18mode-data.qcow2.kept".to_string()] {
        assert_eq!(mode(&env.pool_dir().join(&v)), 0o600, "{v}");
    }
    // What `image save` makes: a flat copy through libvirt.
    let conn = virt::connect::Connect::open(Some("qemu:///system")).unwrap();
    let pool = conn.lookup_storage_pool_by_name(&env.pool).unwrap();
    let data = pool.lookup_storage_vol_by_name("project-o18mode-data.qcow2").unwrap();
    project_vm::libvirt::storage::clone_flat(&pool, "saved@1.img", &data).unwrap();
    assert_eq!(mode(&env.pool_dir().join("saved@1.img")), 0o600);
    project_vm::libvirt::storage::delete(&pool, "saved@1.img").unwrap();
}

/// The user nobody, without XDG_RUNTIME_DIR, on libvirt's test driver (no
/// daemon): its lock directory is planted as a symlink to a directory the
/// planter chose, with the lock file a symlink to one of nobody's files.
#[test]
#[ignore = "needs root (to run as another user); run by scripts/test.sh"]
fn a_planted_lock_directory_is_refused_and_truncates_nothing() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    let t = std::env::temp_dir().join(format!("pvtest-own18-lock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&t);
    std::fs::create_dir_all(&t).unwrap();
    let mut gone = Cleanup::new();
    gone.path(&t);
    let nobody = nix::unistd::Uid::from_raw(65534);
    let nogroup = nix::unistd::Gid::from_raw(65534);
    let chown = |p: &std::path::Path| nix::unistd::chown(p, Some(nobody), Some(nogroup)).unwrap();
    chown(&t);
    std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o755)).unwrap();
    let victim = t.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    chown(&victim);
    let planted = t.join("planted");
    std::fs::create_dir_all(planted.join("locks")).unwrap();
    chown(&planted);
    chown(&planted.join("locks"));
    // The lock file the create takes points at the victim (named for the
    // URI, as it was, and for the URI as the scope of a daemon without a
    // host UUID).
    use sha2::Digest;
    for scope in ["test:///default", "uri|test:///default"] {
        let h = sha2::Sha256::digest(format!("{scope}\nvm:o18x").as_bytes());
        let lock = planted.join("locks").join(format!("{}.lock", hex::encode(&h[..12])));
        std::os::unix::fs::symlink(&victim, &lock).unwrap();
    }
    let key = t.join("id");
    sh(&format!("ssh-keygen -q -t ed25519 -N '' -f {}", key.display()));
    let pubkey = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let config = t.join("config.json");
    // A base image that is nowhere: the create stops there, without the network.
    let settings = json!({"ssh_authorized_keys": [pubkey.trim()], "base_image": t.join("missing.qcow2")});
    std::fs::write(&config, settings.to_string()).unwrap();
    let tmp = t.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    chown(&tmp);
    // No home either: the fallback is a directory of nobody's own in TMPDIR.
    std::os::unix::fs::symlink(&planted, tmp.join("project-vm-65534")).unwrap();
    // A copy nobody can run wherever the build lives (a checkout under /root, say).
    let bin = t.join("project-vm");
    std::fs::copy(BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = |extra: &[(&str, &str)]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .args(["--connect", "test:///default"])
            .args(["create", "o18x", "1G", "1", "5G"])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("PROJECT_VM_CONFIG", &config)
            .env("TMPDIR", &tmp)
            .stdin(Stdio::null());
        for (k, v) in extra {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let out = run(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious", "the victim was written through: {stderr}");
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("symlink"), "{stderr}");
    // With a home, the state directory there; a planted one is refused too.
    let home = t.join("home");
    std::fs::create_dir_all(home.join(".local/state")).unwrap();
    for p in [&home, &home.join(".local"), &home.join(".local/state")] {
        chown(p);
    }
    std::os::unix::fs::symlink(&planted, home.join(".local/state/project-vm")).unwrap();
    let out = run(&[("HOME", home.to_str().unwrap())]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("symlink"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    // Its own, fresh: the directory is made 0700 and the create gets past its locks.
    std::fs::remove_file(home.join(".local/state/project-vm")).unwrap();
    let out = run(&[("HOME", home.to_str().unwrap())]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("lock directory") && !stderr.contains("lock file"), "{stderr}");
    assert_eq!(mode(&home.join(".local/state/project-vm/locks")), 0o700);
    assert_eq!(mode(&home.join(".local/state/project-vm")), 0o700);
}

// Item 8: locks follow the daemon, not the URI's spelling.

const SPELLINGS: [&str; 4] = [
    "qemu:///system",
    "qemu+unix:///system",
    "qemu+unix:///system?socket=/var/run/libvirt/libvirt-sock",
    "qemu:///system?socket=/var/run/libvirt/libvirt-sock",
];

#[test]
#[ignore = "needs root and libvirtd on qemu:///system; run by scripts/test.sh"]
fn parallel_creates_through_different_spellings_get_their_own_ports() {
    let names = ["o18p0", "o18p1", "o18p2", "o18p3"];
    let (env, _c) = tiny_host("own18-ports", 22730, &names);
    for round in 0..3 {
        let children: Vec<_> = names
            .iter()
            .zip(SPELLINGS)
            .map(|(n, uri)| {
                env.cmd(&["create", n, "256M", "1", "2G", "--project-disk", "1G", "--json"])
                    .env("PROJECT_VM_URI", uri)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut ports = Vec::new();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "round {round}: {}", String::from_utf8_lossy(&out.stderr));
            let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            ports.push(r["create"]["ssh_port"].as_u64().unwrap());
        }
        let mut distinct = ports.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len(), "round {round}: duplicate ssh ports {ports:?}");
        for n in names {
            env.run(&["destroy", n]).ok();
        }
    }
}

#[test]
#[ignore = "needs root and libvirtd on qemu:///system; run by scripts/test.sh"]
fn same_name_races_through_different_spellings_leave_one_whole_vm() {
    let (env, _c) = tiny_host("own18-race", 22740, &["o18race"]);
    for round in 0..6 {
        let children: Vec<_> = SPELLINGS
            .iter()
            .map(|uri| {
                spawn(
                    env.cmd(&["create", "o18race", "256M", "1", "2G", "--project-disk", "1G"])
                        .env("PROJECT_VM_URI", uri),
                )
            })
            .collect();
        let outs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
        let won = outs.iter().filter(|o| o.status.success()).count();
        let errs: Vec<String> = outs.iter().map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).collect();
        assert_eq!(won, 1, "round {round}: {won} creates exited 0: {errs:?}");
        // A loser either found the VM made (2) or lost the VM's lock to the
        // winner while it was making it (7, busy).
        for o in outs.iter().filter(|o| !o.status.success()) {
            assert!(matches!(o.status.code(), Some(2 | 7)), "round {round}: {errs:?}");
        }
        assert_eq!(env.vm_volumes(), whole("o18race"), "round {round}: {errs:?}");
        assert_eq!(env.run(&["status", "o18race", "--json"]).ok().json()["phase"], "ready", "round {round}");
        env.run(&["destroy", "o18race"]).ok();
    }
}

#[test]
#[ignore = "needs root and libvirtd on qemu:///system; run by scripts/test.sh"]
fn gc_through_another_spelling_never_takes_parts_of_vms_being_created() {
    let names: Vec<String> = (0..6).map(|i| format!("o18c{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (env, _c) = tiny_host("own18-gcrace", 22820, &refs);
    let stop = std::sync::atomic::AtomicBool::new(false);
    // The gc loop stops however the creates end (a failed assertion too).
    struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    std::thread::scope(|s| {
        let gc = s.spawn(|| {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = env.cmd(&["gc", "--yes"]).env("PROJECT_VM_URI", SPELLINGS[2]).output().unwrap();
                assert!(
                    out.status.success() || out.status.code() == Some(2),
                    "gc: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                runs += 1;
            }
            runs
        });
        let _stop = Stop(&stop);
        for (i, n) in names.iter().enumerate() {
            let uri = SPELLINGS[i % 2];
            let out = env
                .cmd(&["create", n, "256M", "1", "2G", "--project-disk", "1G"])
                .env("PROJECT_VM_URI", uri)
                .output()
                .unwrap();
            assert!(out.status.success(), "create {n}: {}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(env.run(&["status", n, "--json"]).ok().json()["phase"], "ready");
        }
        drop(_stop);
        assert!(gc.join().unwrap() > 0);
    });
    let mut want: Vec<String> = names.iter().flat_map(|n| whole(n)).collect();
    want.sort();
    assert_eq!(env.vm_volumes(), want, "gc took parts of VMs that were reported as made");
}

#[test]
#[ignore = "needs root and libvirtd on qemu:///system; run by scripts/test.sh"]
fn imports_of_one_image_through_different_spellings_store_it_once() {
    let (env, _c) = host_env("own18-img", 22830, json!({"base_image": "tiny"}), &[]);
    let tiny = tiny_image(&env.dir);
    // The pool first, so every import races on the image alone.
    env.run(&["list"]).ok();
    env.run(&["image", "import", tiny.to_str().unwrap(), "--name", "warm"]).ok();
    for round in 0..3 {
        let name = format!("t{round}");
        let children: Vec<_> = SPELLINGS
            .iter()
            .map(|uri| {
                spawn(env.cmd(&["image", "import", tiny.to_str().unwrap(), "--name", &name]).env("PROJECT_VM_URI", uri))
            })
            .collect();
        let outs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
        let errs: Vec<String> = outs.iter().map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).collect();
        assert_eq!(outs.iter().filter(|o| o.status.success()).count(), 1, "round {round}: {errs:?}");
        let stored = env.volumes().iter().filter(|v| v.starts_with(&format!("{name}@"))).count();
        assert_eq!(stored, 2, "round {round}: one disk and one record: {:?}", env.volumes());
    }
}

// Item 11: a first use killed between defining the pool and building it.

#[test]
#[ignore = "needs root and libvirtd on qemu:///system; run by scripts/test.sh"]
fn a_pool_defined_but_never_built_is_built_and_started() {
    let (env, _c) = host_env("own18-pool", 22750, json!({"base_image": "tiny"}), &["o18pool"]);
    let image = tiny_image(&env.dir);
    // What a first use killed right after defining the pool leaves.
    let d = virsh(&["pool-define-as", &env.pool, "dir", "--target", env.pool_dir().to_str().unwrap()]);
    assert!(d.status.success(), "{}", String::from_utf8_lossy(&d.stderr));
    assert!(!env.pool_dir().exists());
    env.run(&["list"]).ok();
    env.run(&["image", "import", image.to_str().unwrap()]).ok();
    assert!(env.pool_dir().is_dir());
    env.run(&["create", "o18pool", "1G", "1", "5G", "--project-disk", "1G"]).ok();
    env.run(&["destroy", "o18pool"]).ok();
    let _ = virsh(&["pool-destroy", &env.pool]);
    assert!(virsh(&["pool-undefine", &env.pool]).status.success());
    let _ = std::fs::remove_dir_all(env.pool_dir());

    // The same through the fault hook, after each step of the first use.
    let mut points = 0;
    for n in 1..10 {
        if !killed_after(&env, n, &["image", "import", image.to_str().unwrap()]) {
            break;
        }
        points = n;
        // Killed after its last change, the import was done: "already exists" is the honest answer.
        let r = env.run(&["image", "import", image.to_str().unwrap()]);
        assert!(r.code == 0 || r.stderr.contains("already exists"), "import after a kill at change {n}: {}", r.stderr);
        env.run(&["create", "o18pool", "1G", "1", "5G", "--project-disk", "1G"]).ok();
        env.run(&["destroy", "o18pool"]).ok();
        let _ = virsh(&["pool-destroy", &env.pool]);
        let _ = virsh(&["pool-undefine", &env.pool]);
        let _ = std::fs::remove_dir_all(env.pool_dir());
    }
    assert!(points >= 3, "the first use made only {points} changes?");
}

fn inode(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).ino()
}

// Item 4: a kept-disk marker cannot be forged.

#[test]
#[ignore = "needs root and libvirtd on qemu:///system; run by scripts/test.sh"]
fn a_forged_kept_marker_adopts_nothing_and_nothing_deletes_the_disk() {
    let (env, _c) = tiny_host("own18-mark", 22760, &["o18f", "o18g"]);
    let pool = env.pool.as_str();
    // A hand-made disk with the right name, and an empty hand-made marker.
    virsh_ok(&["vol-create-as", pool, "project-o18f-data.qcow2", "1G", "--format", "qcow2"]);
    virsh_ok(&["vol-create-as", pool, "project-o18f-data.qcow2.kept", "0", "--format", "raw"]);
    let before = env.volumes();
    let r = env.run(&["create", "o18f", "1G", "1", "5G"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("not adopted") && r.stderr.contains("empty"), "{}", r.stderr);
    assert!(!domain_exists("project-o18f"));
    assert_eq!(env.volumes(), before);
    assert_eq!(env.run(&["destroy", "o18f"]).code, 3);
    assert_eq!(env.run(&["destroy", "o18f", "--keep-data"]).code, 3);
    let gc = env.run(&["gc", "--json"]).ok().json();
    let kind = |gc: &serde_json::Value, n: &str| {
        gc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == n)
            .map(|f| f["kind"].as_str().unwrap().to_owned())
    };
    assert_eq!(kind(&gc, "project-o18f-data.qcow2").as_deref(), Some("unrecorded-volume"), "{gc}");
    env.run(&["gc", "--yes"]).ok();
    assert_eq!(env.run(&["gc", "--yes", "project-o18f-data.qcow2"]).code, 2, "named, it is still no kept disk");
    assert_eq!(env.volumes(), before, "gc removed the hand-made disk or its marker");

    // A real disk kept by destroy --keep-data reattaches.
    env.run(&["create", "o18g", "1G", "1", "5G", "--project-disk", "1G"]).ok();
    env.run(&["destroy", "o18g", "--keep-data"]).ok();
    let r = env.run(&["create", "o18g", "1G", "1", "5G", "--json"]).ok().json();
    assert_eq!(r["create"]["data_reattached"], true);
    env.run(&["destroy", "o18g", "--keep-data"]).ok();
    // Its marker, copied beside the hand-made disk, names another VM and disk.
    let copy = env.dir.join("marker.json");
    virsh_ok(&["vol-download", "--pool", pool, "project-o18g-data.qcow2.kept", copy.to_str().unwrap()]);
    let text = std::fs::read_to_string(&copy).unwrap();
    assert!(text.contains("\"vm\":\"o18g\""), "{text}");
    virsh_ok(&["vol-delete", "--pool", pool, "project-o18f-data.qcow2.kept"]);
    let len = text.len().to_string();
    virsh_ok(&["vol-create-as", pool, "project-o18f-data.qcow2.kept", &len, "--format", "raw"]);
    virsh_ok(&["vol-upload", "--pool", pool, "project-o18f-data.qcow2.kept", copy.to_str().unwrap()]);
    let r = env.run(&["create", "o18f", "1G", "1", "5G"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("left by VM o18g"), "{}", r.stderr);
    // The same marker edited to name o18f still describes another disk.
    let forged = text.replace("\"vm\":\"o18g\"", "\"vm\":\"o18f\"");
    std::fs::write(&copy, &forged).unwrap();
    virsh_ok(&["vol-upload", "--pool", pool, "project-o18f-data.qcow2.kept", copy.to_str().unwrap()]);
    let r = env.run(&["create", "o18f", "1G", "1", "5G"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("not written by this project-vm"), "{}", r.stderr);
    assert!(!domain_exists("project-o18f"));
    // o18g's kept disk replaced by a hand-made one of the same name and size.
    virsh_ok(&["vol-delete", "--pool", pool, "project-o18g-data.qcow2"]);
    virsh_ok(&["vol-create-as", pool, "project-o18g-data.qcow2", "1G", "--format", "qcow2"]);
    let r = env.run(&["create", "o18g", "1G", "1", "5G"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("made again or written"), "{}", r.stderr);
    let before = env.volumes();
    env.run(&["gc", "--yes"]).ok();
    assert_eq!(env.volumes(), before);
}

// Item 10: a reattaching create killed at its commit point.

#[test]
#[ignore = "needs root and libvirtd on qemu:///system; run by scripts/test.sh"]
fn a_reattaching_create_killed_at_its_commit_point_keeps_the_disk_from_a_plain_destroy() {
    let (env, _c) = tiny_host("own18-commit", 22770, &["o18k"]);
    let create = ["create", "o18k", "1G", "1", "5G", "--project-disk", "1G"];
    env.run(&create).ok();
    env.run(&["destroy", "o18k", "--keep-data"]).ok();
    let data = env.pool_dir().join("project-o18k-data.qcow2");
    let marker = "project-o18k-data.qcow2.kept".to_string();
    let mut at_commit = 0;
    for n in 1..40 {
        let before = inode(&data);
        if !killed_after(&env, n, &create[..5]) {
            // It ran to the end: the disk is the VM's; keep it again.
            env.run(&["destroy", "o18k", "--keep-data"]).ok();
            break;
        }
        let marked = env.vm_volumes().contains(&marker);
        let ready = env.run(&["status", "o18k", "--json"]).json().get("phase").is_some_and(|p| p == "ready");
        if ready && marked {
            at_commit = n;
        }
        // What a user does after a create that did not say it finished.
        if domain_exists("project-o18k") {
            env.run(&["destroy", "o18k"]).ok();
        }
        if marked {
            assert!(data.exists(), "a plain destroy after a kill at change {n} deleted the reattached disk");
            assert_eq!(inode(&data), before, "after a kill at change {n}");
            assert!(env.vm_volumes().contains(&marker), "the marker went after a kill at change {n}");
        } else {
            // The create had committed (its marker removed): the disk was the VM's.
            env.run(&create).ok();
            env.run(&["destroy", "o18k", "--keep-data"]).ok();
        }
    }
    assert!(at_commit > 0, "no kill left a ready record beside the marker");
    let r = env.run(&["create", "o18k", "1G", "1", "5G", "--json"]).ok().json();
    assert_eq!(r["create"]["data_reattached"], true);
}

// Item 6: gc never removes what a domain uses, nor what project-vm did not record.

#[test]
#[ignore = "needs root and libvirtd on qemu:///system; run by scripts/test.sh"]
fn gc_never_removes_disks_in_use_or_unrecorded() {
    let (env, mut c) = tiny_host("own18-gc", 22780, &["o18a", "o18r"]);
    let user = format!("pvtest-own18-user-{}", std::process::id());
    c.domain("project-o18b").domain(&user);
    env.run(&["create", "o18a", "1G", "1", "5G", "--project-disk", "1G"]).ok();
    virsh_ok(&["domrename", "project-o18a", "project-o18b"]);
    // A hand-made project-* volume that a hand-made domain uses.
    virsh_ok(&["vol-create-as", &env.pool, "project-o18h-root.qcow2", "1M", "--format", "qcow2"]);
    define_hand_domain(&env, &user, &env.pool_dir().join("project-o18h-root.qcow2"), "qcow2");
    // A volume of somebody else's in the pool, named like nothing of project-vm's.
    virsh_ok(&["vol-create-as", &env.pool, "theirs.qcow2", "1M", "--format", "qcow2"]);
    // A data volume create refused to adopt.
    virsh_ok(&["vol-create-as", &env.pool, "project-o18r-data.qcow2", "1G", "--format", "qcow2"]);
    let r = env.run(&["create", "o18r", "1G", "1", "5G"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("not adopted"), "{}", r.stderr);

    let before = env.volumes();
    let gc = env.run(&["gc", "--json"]).ok().json();
    let found: Vec<(String, String, String)> = gc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().into(),
                f["name"].as_str().unwrap().into(),
                f["action"].as_str().unwrap().into(),
            )
        })
        .collect();
    for (kind, name) in [
        ("in-use-volume", "project-o18a-root.qcow2"),
        ("in-use-volume", "project-o18a-data.qcow2"),
        ("in-use-volume", "project-o18h-root.qcow2"),
        ("unrecorded-volume", "project-o18r-data.qcow2"),
        ("unrecorded-volume", "theirs.qcow2"),
    ] {
        assert!(found.iter().any(|(k, n, _)| k == kind && n == name), "{kind} {name} not in {found:?}");
    }
    assert!(found.iter().all(|(k, _, _)| k != "orphan-volume"), "{found:?}");
    env.run(&["gc", "--yes"]).ok();
    assert_eq!(env.volumes(), before, "gc --yes removed a volume in use or not recorded");
    // The renamed domain still has every disk it names.
    let xml = virsh_ok(&["dumpxml", "project-o18b"]);
    for v in whole("o18a") {
        assert!(xml.contains(&v), "{v}");
        assert!(env.volumes().contains(&v), "{v}");
    }
}

// Item 7: plan/apply never reach another pool; one daemon is one host.

#[test]
#[ignore = "needs root and libvirtd on qemu:///system; run by scripts/test.sh"]
fn plan_and_apply_never_reach_a_vm_in_another_pool() {
    require_root_libvirt();
    let env = Env::new("own18-pools", 22790, json!({"base_image": "tiny"}));
    let other_pool = format!("{}-other", env.pool);
    let other = env.settings_with("other.json", |s| {
        s["pool"] = json!(other_pool);
        s["storage_dir"] = json!(env.dir.join("other"));
    });
    // The VM made with the second settings file (another pool), then that pool, then the env.
    let mut in_other_env = env.clone();
    in_other_env.config = other.clone();
    let mut c = Cleanup::of(&env, &[]);
    c.pool(&other_pool).vms(&in_other_env, &["o18o"]);
    let tiny = tiny_image(&env.dir);
    let in_other = |args: &[&str]| {
        let out = env.cmd(args).env("PROJECT_VM_CONFIG", &other).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    in_other(&["image", "import", tiny.to_str().unwrap()]);
    in_other(&["create", "o18o", "1G", "1", "5G", "--project-disk", "1G"]);
    let xml = || String::from_utf8(virsh(&["dumpxml", "--inactive", "project-o18o"]).stdout).unwrap();
    let data_cap = || virsh_ok(&["vol-info", "--bytes", "--pool", &other_pool, "project-o18o-data.qcow2"]);
    let (xml0, cap0) = (xml(), data_cap());

    env.run(&["image", "import", tiny.to_str().unwrap()]).ok();
    let file = env.dir.join("vms.json");
    let doc = json!({"vms": {"o18o": {"memory": "2G", "cpus": 2, "disk": "6G", "project_disk": "2G"}}});
    std::fs::write(&file, doc.to_string()).unwrap();
    let f = file.to_str().unwrap();
    let p = env.run(&["plan", "-f", f, "--json"]).ok().json();
    let vm = &p["vms"][0];
    assert_eq!(vm["changes"][0]["field"], "pool", "{p}");
    assert_eq!(vm["changes"][0]["class"], "impossible", "{p}");
    assert_eq!(vm["changes"].as_array().unwrap().len(), 1, "{p}");
    for extra in [&[][..], &["--recreate"][..], &["--restart"][..]] {
        let mut args = vec!["apply", "-f", f];
        args.extend(extra);
        let r = env.run(&args);
        assert_eq!(r.code, 2, "{args:?}: {} {}", r.stdout, r.stderr);
        assert!(r.stderr.contains("another pool"), "{}", r.stderr);
        assert_eq!(xml(), xml0, "{args:?} redefined the VM in the other pool");
        assert_eq!(data_cap(), cap0, "{args:?} grew its project disk");
        assert!(env.vm_volumes().is_empty(), "{args:?} made volumes in this pool: {:?}", env.vm_volumes());
    }
    // Told --all-pools, the plan manages it where it is.
    let p = env.run(&["plan", "-f", f, "--all-pools", "--json"]).ok().json();
    assert!(p["vms"][0]["changes"].as_array().unwrap().iter().all(|c| c["field"] != "pool"), "{p}");
}

#[test]
#[ignore = "needs root and libvirtd on qemu:///system; run by scripts/test.sh"]
fn two_fleet_hosts_that_are_one_daemon_are_refused() {
    let (env, _c) = tiny_host("own18-hosts", 22800, &["o18x"]);
    env.run(&["create", "o18x", "1G", "1", "5G", "--project-disk", "1G"]).ok();
    let pool = env.pool.clone();
    let fleet = env.settings_with("fleet.json", |s| {
        s["hosts"] = json!({
            "a": {"uri": "qemu+unix:///system", "pool": format!("{pool}-a")},
            "b": {"uri": "qemu:///system", "pool": pool},
        });
    });
    let run = |args: &[&str]| {
        let out = env.cmd(args).env("PROJECT_VM_CONFIG", &fleet).env_remove("PROJECT_VM_URI").output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    for args in [
        &["--host", "a", "destroy", "o18x"][..],
        &["--host", "a", "stop", "o18x"][..],
        &["destroy", "o18x"][..],
        &["list"][..],
        &["--host", "a", "create", "o18y", "1G", "1", "5G"][..],
        &["--host", "a", "gc", "--yes"][..],
    ] {
        let (code, stderr) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("same libvirt daemon"), "{args:?}: {stderr}");
        assert!(domain_exists("project-o18x"), "{args:?} destroyed the VM");
    }
    let file = env.dir.join("vms.json");
    std::fs::write(&file, json!({"vms": {"o18x": {"host": "a"}}}).to_string()).unwrap();
    for verb in ["plan", "apply"] {
        let (code, stderr) = run(&[verb, "-f", file.to_str().unwrap(), "--prune"]);
        assert_eq!(code, Some(2), "{verb}: {stderr}");
        assert!(stderr.contains("same libvirt daemon"), "{verb}: {stderr}");
    }
    assert_eq!(env.vm_volumes(), whole("o18x"));
    assert!(!domain_exists("project-o18y"));
}

/// Bind mounts this test made, under a directory of its own; unmounted
/// (and their empty mount points removed, never recursively) when dropped.
struct Binds(std::path::PathBuf, Vec<std::path::PathBuf>);

impl Binds {
    fn bind(&mut self, from: &std::path::Path, at: &str) -> std::path::PathBuf {
        let point = self.0.join(at);
        std::fs::create_dir_all(&point).unwrap();
        let ok = Command::new("mount").arg("--bind").arg(from).arg(&point).status().unwrap().success();
        assert!(ok, "mount --bind {} {}", from.display(), point.display());
        self.1.push(point.clone());
        point
    }
}

impl Drop for Binds {
    fn drop(&mut self) {
        for p in self.1.iter().rev() {
            if !Command::new("umount").arg(p).status().is_ok_and(|s| s.success()) {
                let _ = Command::new("umount").arg("-l").arg(p).status();
            }
        }
        for p in self.1.iter().rev() {
            let _ = std::fs::remove_dir(p);
        }
        let _ = std::fs::remove_dir(self.0.join("data"));
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
#[ignore = "needs root and libvirtd on qemu:///system; run by scripts/test.sh"]
fn shares_through_bind_mounts_of_protected_directories_are_refused() {
    let (env, _c) = tiny_host("fixshare-bind", 22710, &["fsb"]);
    // Outside env.dir, so nothing removes that directory recursively while mounted.
    let root = std::env::temp_dir().join(format!("pvtest-fixshare-binds-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let mut binds = Binds(root.clone(), Vec::new());
    let etc = binds.bind(std::path::Path::new("/etc"), "bindetc");
    let ssh = binds.bind(std::path::Path::new("/etc/ssh"), "bindssh");
    let pool = binds.bind(&env.pool_dir(), "bindpool");
    let _below = binds.bind(std::path::Path::new("/etc/ssh"), "data/ssh");
    let cases = [
        (etc.display().to_string(), "/etc"),
        (ssh.display().to_string(), "/etc"),
        (pool.display().to_string(), "pool"),
        (root.join("data").display().to_string(), "below the source"),
    ];
    for (source, why) in &cases {
        let share = format!("{source}:/mnt/x");
        let r = env.run(&["create", "fsb", "1G", "1", "5G", "--share", &share]);
        assert_eq!(r.code, 2, "{share} was not refused: {}", r.stderr);
        assert!(r.stderr.contains(why), "{share}: expected {why:?} in: {}", r.stderr);
        assert!(r.stderr.contains(&format!("share {share}")), "{share}: the message names the share: {}", r.stderr);
        assert!(!domain_exists("project-fsb"), "{share}: a domain was defined");
        assert_eq!(env.vm_volumes(), Vec::<String>::new(), "{share}");
    }
    drop(binds);
    assert!(!root.exists(), "the test's mount points were left behind");
    assert!(std::path::Path::new("/etc/ssh").is_dir(), "/etc/ssh is still there");
}

#[test]
#[ignore = "needs root and libvirtd on qemu:///system; run by scripts/test.sh"]
fn plan_checks_image_files_before_apply_imports_them() {
    let (env, _c) = host_env("fixshare-plan", 22720, json!({}), &["fsp"]);
    let tiny = tiny_image(&env.dir);
    let overlay = env.dir.join("overlay.qcow2");
    sh(&format!("qemu-img create -q -f qcow2 -b {} -F qcow2 {}", tiny.display(), overlay.display()));
    let file = env.dir.join("vms.json");
    let f = file.to_str().unwrap();
    let no_pool = || !virsh(&["pool-info", &env.pool]).status.success() || env.volumes().is_empty();
    // An image file with a backing file: refused at plan, and apply imports nothing.
    let doc = json!({"vms": {"fsp": {"memory": "1G", "cpus": 1, "disk": "5G", "image": overlay}}});
    std::fs::write(&file, doc.to_string()).unwrap();
    for verb in ["plan", "apply"] {
        let r = env.run(&[verb, "-f", f]);
        assert_eq!(r.code, 2, "{verb} with a backing file: {}", r.stderr);
        assert!(r.stderr.contains("backing"), "{verb}: {}", r.stderr);
        assert!(!domain_exists("project-fsp") && no_pool(), "{verb} changed something");
    }
    // A disk smaller than the default base image, a file not yet imported.
    let mut settings = env.settings();
    settings["base_image"] = json!(tiny);
    std::fs::write(&env.config, settings.to_string()).unwrap();
    std::fs::write(&file, json!({"vms": {"fsp": {"disk": "1K"}}}).to_string()).unwrap();
    for verb in ["plan", "apply"] {
        let r = env.run(&[verb, "-f", f]);
        assert_eq!(r.code, 2, "{verb} with a disk smaller than the image: {}", r.stderr);
        assert!(r.stderr.contains("smaller than its image"), "{verb}: {}", r.stderr);
        assert!(!domain_exists("project-fsp") && no_pool(), "{verb} changed something");
    }
}

/// A plain user of this test's own (removed, with the session daemon its
/// commands started, by the test's cleanup guard).
struct PlainUser(&'static str);

impl PlainUser {
    fn run(&self, args: &[&str]) -> (i32, String) {
        let home = format!("/home/{}", self.0);
        let out = Command::new("runuser")
            .args(["-u", self.0, "--", "env", "-i"])
            .arg(format!("HOME={home}"))
            .arg(format!("USER={}", self.0))
            .args(["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"])
            .args(args)
            .current_dir(&home)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    }
}

#[test]
#[ignore = "needs root (to make a user) and libvirtd; run by scripts/test.sh"]
fn a_plain_users_share_is_refused_before_anything_is_imported() {
    require_root_libvirt();
    let name = "pvtest-fixshare-u";
    assert!(!sh(&format!("getent passwd {name} || true")).contains(name), "user {name} exists: not this test's to use");
    sh(&format!("useradd --create-home --shell /bin/bash --user-group {name}"));
    let mut gone = Cleanup::new();
    gone.user(name);
    let user = PlainUser(name);
    let home = format!("/home/{name}");
    let bin = format!("{home}/project-vm");
    std::fs::copy(BIN, &bin).unwrap();
    sh(&format!(
        "qemu-img create -q -f qcow2 {home}/tiny.qcow2 1G && mkdir -p {home}/shared {home}/.config/project-vm"
    ));
    let settings = json!({"accel": "tcg", "base_image": format!("{home}/tiny.qcow2"), "ssh_authorized_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOrUuPHcX0EBHf+EB9Nl7gklkDq2TbK6HXAbiUZmjLCk test"]});
    std::fs::write(format!("{home}/.config/project-vm/config.json"), settings.to_string()).unwrap();
    sh(&format!("chown -R {name}: {home}"));
    let (code, out) = user.run(&[&bin, "create", "fsu", "1G", "1", "5G", "--share", &format!("{home}/shared:/mnt/s")]);
    // This host has no virtiofsd the user may run (or no user namespace for it): refused.
    if code == 0 {
        let _ = user.run(&[&bin, "destroy", "fsu"]);
        return;
    }
    assert!(matches!(code, 2 | 4), "{out}");
    assert!(out.contains("virtiofsd") || out.contains("share"), "{out}");
    let (_, pools) = user.run(&["virsh", "-c", "qemu:///session", "pool-list", "--all", "--name"]);
    assert!(pools.trim().is_empty(), "a refused create made a pool (and imported into it): {pools}");
}

// fix-own: markers carry a MAC; disks another domain uses, reached through a
// symlink or backing an overlay outside the pool, are never adopted or deleted.

/// Defines domain `name` (never started) with one disk at `path`.
fn define_hand_domain(env: &Env, name: &str, path: &std::path::Path, format: &str) {
    let xml = format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os>\
         <devices><disk type='file' device='disk'><driver name='qemu' type='{format}'/><source file='{}'/>\
         <target dev='vda' bus='virtio'/></disk></devices></domain>",
        path.display()
    );
    let file = env.dir.join(format!("{name}.xml"));
    std::fs::write(&file, xml).unwrap();
    virsh_ok(&["define", file.to_str().unwrap()]);
}

/// Replaces (or makes) raw volume `name` in `env`'s pool with `bytes`.
fn upload_volume(env: &Env, name: &str, bytes: &[u8]) {
    let _ = virsh(&["vol-delete", "--pool", &env.pool, name]);
    let file = env.dir.join("upload.bin");
    std::fs::write(&file, bytes).unwrap();
    virsh_ok(&["vol-create-as", &env.pool, name, &bytes.len().to_string(), "--format", "raw"]);
    virsh_ok(&["vol-upload", "--pool", &env.pool, name, file.to_str().unwrap()]);
}

#[test]
#[ignore = "needs root and libvirtd on qemu:///system; run by scripts/test.sh"]
fn fixown_a_marker_without_this_users_mac_adopts_nothing() {
    let (env, _c) = tiny_host("fixown-mac", 22800, &["fxm", "fxk"]);
    let pool = env.pool.as_str();
    // A hand-made disk and a marker that describes it exactly, as anyone who
    // can write the pool can make from `vol-dumpxml`.
    virsh_ok(&["vol-create-as", pool, "project-fxm-data.qcow2", "1G", "--format", "qcow2"]);
    let xml = virsh_ok(&["vol-dumpxml", "--pool", pool, "project-fxm-data.qcow2"]);
    let tag = |t: &str| {
        xml.split(&format!("<{t}>")).nth(1).and_then(|r| r.split(&format!("</{t}>")).next()).map(str::to_owned)
    };
    let mut marker = json!({
        "project_vm_kept": 1,
        "vm": "fxm",
        "record_uuid": "6b1e3c1e-0000-4000-8000-000000000000",
        "volume": "project-fxm-data.qcow2",
        "key": tag("key").unwrap(),
        "capacity": 1u64 << 30,
        "mtime": tag("mtime").unwrap(),
    });
    let before_marker = env.volumes();
    for mac in [None, Some("00".repeat(32))] {
        if let Some(m) = mac {
            marker["mac"] = json!(m);
        }
        upload_volume(&env, "project-fxm-data.qcow2.kept", marker.to_string().as_bytes());
        let before = env.volumes();
        let r = env.run(&["create", "fxm", "1G", "1", "5G"]);
        assert_eq!(r.code, 2, "a forged marker ({marker}) was accepted: {} {}", r.stdout, r.stderr);
        assert!(r.stderr.contains("not written by this project-vm"), "{}", r.stderr);
        assert!(r.stderr.contains("vol-clone"), "it says how to proceed: {}", r.stderr);
        assert!(!domain_exists("project-fxm"));
        assert_eq!(env.volumes(), before);
        env.run(&["gc", "--yes"]).ok();
        assert_eq!(env.volumes(), before, "gc removed the hand-made disk or its marker");
        assert_eq!(env.run(&["gc", "--yes", "project-fxm-data.qcow2"]).code, 2);
    }
    assert!(before_marker.contains(&"project-fxm-data.qcow2".to_string()));

    // A disk kept on this machine reattaches; kept by another user (another
    // secret), it is refused with the same message.
    env.run(&["create", "fxk", "1G", "1", "5G", "--project-disk", "1G"]).ok();
    env.run(&["destroy", "fxk", "--keep-data"]).ok();
    let secret = env.dir.join("state/project-vm/secret");
    assert_eq!(mode(&secret), 0o600);
    assert_eq!(std::fs::metadata(&secret).unwrap().len(), 32);
    let out =
        env.cmd(&["create", "fxk", "1G", "1", "5G"]).env("XDG_STATE_HOME", env.dir.join("other")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not written by this project-vm"), "{stderr}");
    assert!(!domain_exists("project-fxk"));
    let r = env.run(&["create", "fxk", "1G", "1", "5G", "--json"]).ok().json();
    assert_eq!(r["create"]["data_reattached"], true);
}

#[test]
#[ignore = "needs root and libvirtd on qemu:///system; run by scripts/test.sh"]
fn fixown_a_disk_another_domain_uses_is_neither_reattached_nor_deleted() {
    let (env, mut c) = tiny_host("fixown-use", 22810, &["fxu", "fxd"]);
    let (a, b) =
        (format!("pvtest-fixown-use-{}", std::process::id()), format!("pvtest-fixown-del-{}", std::process::id()));
    c.domain(&a).domain(&b);
    // A disk genuinely kept by destroy --keep-data, which a hand-made domain then uses.
    env.run(&["create", "fxu", "1G", "1", "5G", "--project-disk", "1G"]).ok();
    env.run(&["destroy", "fxu", "--keep-data"]).ok();
    define_hand_domain(&env, &a, &env.pool_dir().join("project-fxu-data.qcow2"), "qcow2");
    let before = env.volumes();
    let r = env.run(&["create", "fxu", "1G", "1", "5G"]);
    assert_eq!(r.code, 2, "a disk domain {a} uses was reattached: {} {}", r.stdout, r.stderr);
    assert!(r.stderr.contains(&a) && r.stderr.contains("uses it"), "{}", r.stderr);
    assert!(!domain_exists("project-fxu"));
    assert_eq!(env.volumes(), before);
    // A plain destroy never deletes a disk another domain uses.
    env.run(&["create", "fxd", "1G", "1", "5G", "--project-disk", "1G"]).ok();
    define_hand_domain(&env, &b, &env.pool_dir().join("project-fxd-data.qcow2"), "qcow2");
    env.run(&["destroy", "fxd"]).ok();
    assert!(!domain_exists("project-fxd"));
    let after = env.volumes();
    assert!(after.contains(&"project-fxd-data.qcow2".to_string()), "destroy deleted a disk {b} uses: {after:?}");
    assert!(!after.contains(&"project-fxd-root.qcow2".to_string()), "{after:?}");
}

#[test]
#[ignore = "needs root and libvirtd on qemu:///system; run by scripts/test.sh"]
fn fixown_gc_keeps_volumes_used_through_a_symlink_or_an_overlay_outside_the_pool() {
    let (env, mut c) = tiny_host("fixown-gc", 22820, &[]);
    let (y, z) =
        (format!("pvtest-fixown-ln-{}", std::process::id()), format!("pvtest-fixown-ovl-{}", std::process::id()));
    c.domain(&y).domain(&z);
    let pool = env.pool.as_str();
    // Uploads without records (gc removes those no domain uses).
    for v in ["fxw@1.img", "fxy@1.img"] {
        virsh_ok(&["vol-create-as", pool, v, "1M", "--format", "raw"]);
    }
    virsh_ok(&["vol-create-as", pool, "fxz@1.img", "1M", "--format", "qcow2"]);
    // One used through a symlink to the pool directory.
    let ln = env.dir.join("lnstore");
    std::os::unix::fs::symlink(env.pool_dir(), &ln).unwrap();
    define_hand_domain(&env, &y, &ln.join("fxy@1.img"), "raw");
    // One backing an overlay outside the pool, the XML naming no backing store.
    let ovl = env.dir.join("ovl.qcow2");
    let base = env.pool_dir().join("fxz@1.img");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-b", base.to_str().unwrap(), "-F", "qcow2", ovl.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    define_hand_domain(&env, &z, &ovl, "qcow2");
    let gc = env.run(&["gc", "--json"]).ok().json();
    let action = |n: &str| {
        gc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == n)
            .map(|f| f["action"].as_str().unwrap().to_owned())
    };
    assert_eq!(action("fxw@1.img").as_deref(), Some("would remove"), "{gc}");
    assert_eq!(action("fxy@1.img"), Some(format!("kept: in use by domain {y}")), "{gc}");
    assert_eq!(action("fxz@1.img"), Some(format!("kept: in use by domain {z}")), "{gc}");
    env.run(&["gc", "--yes"]).ok();
    let after = env.volumes();
    assert!(!after.contains(&"fxw@1.img".to_string()), "{after:?}");
    for v in ["fxy@1.img", "fxz@1.img"] {
        assert!(after.contains(&v.to_string()), "gc --yes removed {v}, which a domain uses: {after:?}");
    }
}
