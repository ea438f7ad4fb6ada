//! A fleet on two real libvirt daemons on this machine: the system daemon
//! (qemu:///system) and a separate session daemon of the user `pvfleet`
//! (started by scripts/setup-host.sh), each with its own domains and pools;
//! plus a third host whose socket does not exist.

mod common;

use std::process::Command;

use common::*;
use serde_json::{json, Value};

const SESSION: &str = "qemu+unix:///session?socket=/run/project-vm-fleet/libvirt/libvirt-sock";
const DOWN: &str = "qemu+unix:///session?socket=/run/project-vm-fleet/no-such-daemon";

fn require_second_daemon() {
    let ok = Command::new("virsh").args(["-c", SESSION, "version"]).output();
    assert!(
        ok.is_ok_and(|o| o.status.success()),
        "the second libvirt daemon does not answer on {SESSION}: run scripts/setup-host.sh first"
    );
}

fn virsh_on(uri: &str, args: &[&str]) -> std::process::Output {
    Command::new("virsh").arg("-c").arg(uri).args(args).output().unwrap()
}

fn has_domain(uri: &str, name: &str) -> bool {
    virsh_on(uri, &["dominfo", name]).status.success()
}

/// Settings with hosts `sys` and `ses`; the session host keeps its pool in
/// the pvfleet user's home, where that daemon can write.
fn fleet_env(tag: &str, port: u16) -> (Env, String) {
    let ses_pool = format!("pvfleet-{tag}-{}", std::process::id());
    let ses_dir = format!("/var/lib/pvfleet/pools/{ses_pool}");
    let mut env = Env::new(
        tag,
        port,
        json!({
            "base_image": "tiny",
            "hosts": {
                "sys": {"uri": "qemu:///system"},
                "ses": {"uri": SESSION, "pool": ses_pool, "storage_dir": ses_dir,
                        "network": {"type": "user", "ssh_port": port + 50}},
            }
        }),
    );
    // No --connect: the settings' hosts are the fleet.
    env.uri = String::new();
    (env, ses_pool)
}

/// The env, the session host's pool and its directory, and every VM of
/// the fleet's pools (an apply --prune of an empty file), removed in the
/// reverse order.
fn cleanup(env: &Env, ses_pool: &str) -> Cleanup {
    let mut c = Cleanup::of(env, &[]);
    c.path(format!("/var/lib/pvfleet/pools/{ses_pool}")).pool_on(SESSION, ses_pool).prune(env);
    c
}

fn write(env: &Env, name: &str, doc: Value) -> String {
    let p = env.dir.join(name);
    std::fs::write(&p, doc.to_string()).unwrap();
    p.to_str().unwrap().to_owned()
}

#[test]
#[ignore = "needs root, libvirtd and the second daemon of scripts/setup-host.sh; run by scripts/test.sh"]
fn one_file_places_vms_on_two_daemons_and_every_verb_finds_them() {
    require_root_libvirt();
    require_second_daemon();
    let (env, ses_pool) = fleet_env("fleet", 23400);
    let _guard = cleanup(&env, &ses_pool);
    let image = tiny_image(&env.dir);
    for host in ["sys", "ses"] {
        env.run(&["image", "import", image.to_str().unwrap(), "--name", "tiny", "--host", host]).ok();
    }
    let small = json!({"memory": "256M", "cpus": 1, "disk": "2G", "project_disk": "1G"});
    let mut vms = json!({
        "a": {"host": "sys"},
        "b": {"host": "ses", "depends_on": ["a"]},
    });
    let file = write(&env, "fleet.json", json!({"defaults": small, "vms": vms}));

    let r = env.run(&["apply", "-f", &file, "--json"]).ok().json();
    assert_eq!(r["failed"], 0);
    let order: Vec<&str> = r["results"].as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!(order, ["a", "b"], "b depends on a, on another host: a first");
    assert!(has_domain("qemu:///system", "project-a") && !has_domain(SESSION, "project-a"));
    assert!(has_domain(SESSION, "project-b") && !has_domain("qemu:///system", "project-b"));
    let vols = String::from_utf8(virsh_on(SESSION, &["vol-list", "--pool", &ses_pool]).stdout).unwrap();
    assert!(vols.contains("project-b-root.qcow2"), "{vols}");
    assert_eq!(env.run(&["apply", "-f", &file, "--json"]).ok().json()["changes"], 0, "re-apply changes nothing");

    // list shows both, with their hosts; --host filters.
    let listed = env.run(&["list", "--json"]).ok().json();
    let pairs: Vec<(String, String)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["host"].as_str().unwrap().into(), e["name"].as_str().unwrap().into()))
        .collect();
    assert_eq!(pairs, [("ses".to_string(), "b".to_string()), ("sys".into(), "a".into())]);
    let table = env.run(&["list"]).ok().stdout;
    assert!(table.starts_with("HOST"), "{table}");
    let only = env.run(&["list", "--json", "--host", "ses"]).ok().json();
    assert_eq!(only.as_array().unwrap().len(), 1);
    assert_eq!(env.run(&["list", "--host", "nope"]).code, 2, "an unknown host is named");

    // status finds each by name.
    assert_eq!(env.run(&["status", "a", "--json"]).ok().json()["name"], "a");
    assert_eq!(env.run(&["status", "b", "--json"]).ok().json()["name"], "b");

    // The same name on both hosts is ambiguous; --host picks.
    env.run(&["create", "dup", "256M", "1", "2G", "--project-disk", "1G", "--host", "sys"]).ok();
    env.run(&["create", "dup", "256M", "1", "2G", "--project-disk", "1G", "--host", "ses"]).ok();
    let amb = env.run(&["status", "dup"]);
    assert_eq!(amb.code, 2, "{}", amb.stderr);
    assert!(amb.stderr.contains("more than one host") && amb.stderr.contains("--host (ses or sys)"), "{}", amb.stderr);
    // Each keeps its own ssh identity: a host key pinned for one never vouches for the other.
    let cfg = env.run(&["ssh-config"]).ok().stdout;
    assert!(cfg.contains("Host project-dup.sys") && cfg.contains("Host project-dup.ses"), "{cfg}");
    assert!(cfg.contains("HostKeyAlias project-dup.ses"), "{cfg}");
    env.run(&["destroy", "dup", "--host", "ses"]).ok();
    assert!(has_domain("qemu:///system", "project-dup") && !has_domain(SESSION, "project-dup"));
    env.run(&["destroy", "dup"]).ok();
    let which = env.run(&["create", "x", "256M", "1", "2G"]);
    assert_eq!(which.code, 2);
    assert!(which.stderr.contains("which host"), "{}", which.stderr);

    // A host that is down fails its VMs and their dependents only.
    let mut with_down = vms.clone();
    with_down["c"] = json!({"host": "down"});
    with_down["d"] = json!({"host": "sys", "depends_on": ["c"]});
    let down_file =
        write(&env, "down.json", json!({"hosts": {"down": {"uri": DOWN}}, "defaults": small, "vms": with_down}));
    let r = env.run(&["apply", "-f", &down_file, "--json"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("host down") && r.stderr.contains("no-such-daemon"), "{}", r.stderr);
    let report = r.json();
    let result = |n: &str| report["results"].as_array().unwrap().iter().find(|x| x["name"] == n).unwrap().clone();
    assert!(result("c")["error"].as_str().unwrap().contains("host down"), "{report}");
    assert!(result("d")["error"].as_str().unwrap().contains("dependency c failed"), "{report}");
    assert!(result("a")["error"].is_null() && result("b")["error"].is_null(), "{report}");
    assert!(!has_domain("qemu:///system", "project-d"));

    // --prune never destroys a VM the file declares on a host that is down.
    let mut to_down = vms.clone();
    to_down["b"] = json!({"host": "down"});
    let to_down =
        write(&env, "to-down.json", json!({"hosts": {"down": {"uri": DOWN}}, "defaults": small, "vms": to_down}));
    let r = env.run(&["apply", "-f", &to_down, "--prune"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stdout.contains("b (ses): declared on host down, which did not answer"), "{}", r.stdout);
    assert!(has_domain(SESSION, "project-b"), "pruned a VM the file declares");
    // --host plans that host alone.
    let only = env.run(&["plan", "-f", &to_down, "--host", "sys", "--json"]).ok().json();
    assert!(only["vms"].as_array().unwrap().iter().all(|v| v["host"] == "sys"), "{only}");
    assert_eq!(env.run(&["plan", "-f", &to_down, "--host", "sess"]).code, 2);

    // With a host down, a verb that changes a VM will not guess which one is meant.
    let mut settings = env.settings();
    settings["hosts"]["down"] = json!({"uri": DOWN});
    let with_down = env.dir.join("with-down.json");
    std::fs::write(&with_down, settings.to_string()).unwrap();
    let run_down = |args: &[&str]| env.cmd(args).env("PROJECT_VM_CONFIG", &with_down).output().unwrap();
    let stop = run_down(&["stop", "a"]);
    let err = String::from_utf8_lossy(&stop.stderr);
    assert_eq!(stop.status.code(), Some(4), "{err}");
    assert!(err.contains("host down") && err.contains("--host sys"), "{err}");
    let look = run_down(&["status", "a", "--json"]);
    assert!(look.status.success(), "{}", String::from_utf8_lossy(&look.stderr));

    // Moving b to the other host needs --recreate, and says the disk stays.
    vms["b"]["host"] = json!("sys");
    let moved = write(&env, "moved.json", json!({"defaults": small, "vms": vms}));
    let plan = env.run(&["plan", "-f", &moved]).ok().stdout;
    assert!(plan.contains("host: ses -> sys: needs --recreate") && plan.contains("stays on the old host"), "{plan}");
    assert!(has_domain(SESSION, "project-b"), "a plan changes nothing");
    let r = env.run(&["apply", "-f", &moved, "--recreate", "--json"]).ok().json();
    assert_eq!(r["failed"], 0, "{r}");
    assert!(has_domain("qemu:///system", "project-b") && !has_domain(SESSION, "project-b"));
    let vols = String::from_utf8(virsh_on(SESSION, &["vol-list", "--pool", &ses_pool]).stdout).unwrap();
    assert!(vols.contains("project-b-data.qcow2"), "the old project disk stays: {vols}");
    assert_eq!(env.run(&["apply", "-f", &moved, "--json"]).ok().json()["changes"], 0);
}

#[test]
#[ignore = "boots a guest; needs root, libvirtd, the second daemon and PROJECT_VM_TEST_IMAGE; run by scripts/test.sh"]
fn a_guest_boots_on_the_second_daemon() {
    require_root_libvirt();
    require_second_daemon();
    let image = test_image("PROJECT_VM_TEST_IMAGE");
    let _lock = guest_boot_lock();
    let (env, ses_pool) = fleet_env("fleetboot", 23600);
    let _guard = cleanup(&env, &ses_pool);
    env.run(&["image", "import", &image, "--name", "tiny", "--host", "ses"]).ok();
    let r = env.run(&[
        "create",
        "boot",
        "1G",
        "1",
        "4G",
        "--project-disk",
        "1G",
        "--host",
        "ses",
        "--start",
        "--wait",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(has_domain(SESSION, "project-boot") && !has_domain("qemu:///system", "project-boot"));
    // Found by name without --host, and ssh reaches it.
    assert_eq!(env.ssh("boot", "cat /etc/hostname").trim(), "project-boot");
    assert!(env.ssh("boot", "findmnt -n -o TARGET /project").contains("/project"));
    env.run(&["destroy", "boot"]).ok();
    assert!(!has_domain(SESSION, "project-boot"));
}
