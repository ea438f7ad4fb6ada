//! A project VM's day: suspend and resume, clone, and every verb seeing the
//! hosts of the declarative file.
//!
//! Most of it runs on libvirt's test driver (`test:///...`: no daemon, fresh
//! state per process), which keeps managed saves as libvirt does. One test
//! boots a guest (`#[ignore]`d: root, libvirtd and PROJECT_VM_TEST_IMAGE, run
//! by scripts/test.sh under the guest-boot lock): a file held open before
//! the suspend is still open after it, in the same boot; a clone is a new
//! machine with a fresh project disk.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use project_vm::error::Kind;
use project_vm::libvirt::{
    domain_xml,
    metadata::{Ownership, Phase},
    storage, vms,
};
use project_vm::ops::{self, clone::CloneRequest, Ctx};
use project_vm::progress::Progress;
use project_vm::spec::{VmName, VmSpec};

fn ctx() -> Ctx {
    common::driver::driver_ctx()
}

fn name(s: &str) -> VmName {
    VmName::parse(s).unwrap()
}

fn pool(ctx: &Ctx) -> virt::storage_pool::StoragePool {
    storage::ensure_pool(&ctx.conn(), &ctx.uri, &ctx.settings).unwrap()
}

fn volumes(pool: &virt::storage_pool::StoragePool) -> Vec<String> {
    let mut v = pool.list_volumes().unwrap();
    v.sort();
    v
}

/// Defines a whole VM the way `create` records it (no uploads), `edit`
/// changing its spec first; returns it, shut off.
fn define(ctx: &Ctx, n: &str, edit: impl FnOnce(&mut VmSpec)) -> vms::Vm {
    let pool = pool(ctx);
    let n = name(n);
    let keys = ctx.settings.authorized_keys().unwrap();
    let req = common::driver::request(n.as_str());
    let mut spec = ops::create::desired_spec(ctx, &req, &keys, "base.qcow2".into(), Some(22022));
    edit(&mut spec);
    let own = Ownership {
        xmlns: None,
        version: 1,
        name: n.to_string(),
        uuid: None,
        phase: Phase::Ready,
        pool: ctx.settings.pool.clone(),
        root_volume: n.root_volume(),
        data_volume: n.data_volume(),
        data_kept: false,
        seed_volume: None,
        created: 1,
        host_key: Some("ssh-ed25519 AAAA test".into()),
        spec_json: serde_json::to_string(&spec).unwrap(),
    };
    storage::create_qcow2(&pool, &n.root_volume(), spec.resources.disk.bytes()).unwrap();
    storage::create_qcow2(&pool, &n.data_volume(), spec.resources.project_disk.bytes()).unwrap();
    ctx.conn().define_domain_xml(&domain_xml::build(&spec, &own, &domain_xml::HostFiles::default()).to_xml()).unwrap();
    vms::get(&ctx.conn(), &n).unwrap()
}

fn kind(e: &anyhow::Error) -> Kind {
    project_vm::exit::kind(e)
}

fn state_in_list(ctx: &Ctx, n: &str) -> String {
    let listing = ops::list::list(ctx, false).unwrap();
    let e = listing.0.iter().find(|e| e.name == n).expect("listed");
    serde_json::to_value(e).unwrap()["state"].as_str().unwrap().to_owned()
}

#[test]
fn suspend_saves_start_resumes_and_destroy_removes_the_saved_state() {
    let ctx = ctx();
    let vm = define(&ctx, "sus", |_| {});
    // Not running: nothing to save (exit 8), nothing changed.
    let err = ops::suspend::suspend(&ctx, &vm).unwrap_err();
    assert_eq!(kind(&err), Kind::NotReady, "{err:#}");
    assert!(!vm.dom.has_managed_save(0).unwrap());

    vm.dom.create().unwrap();
    let r = ops::suspend::suspend(&ctx, &vm).unwrap();
    assert_eq!(r.result, "suspended");
    assert!(vm.dom.has_managed_save(0).unwrap(), "libvirt holds the saved state");
    assert!(!vm.dom.is_active().unwrap());
    assert_eq!(vm.state(), vms::State::Suspended);
    assert_eq!(state_in_list(&ctx, "sus"), "suspended");
    let status = serde_json::to_value(ops::status::status(&ctx, &vm).unwrap()).unwrap();
    assert_eq!(status["state"], "suspended", "{status}");
    // Again: converges, nothing to do.
    assert_eq!(ops::suspend::suspend(&ctx, &vm).unwrap().result, "already-suspended");

    // A plain stop would lose what the guest had in memory: refused, exit 2.
    let err = ops::power::stop(&ctx, &vm, std::time::Duration::from_secs(1), false).unwrap_err();
    assert_eq!(kind(&err), Kind::Invalid, "{err:#}");
    assert!(vm.dom.has_managed_save(0).unwrap(), "the saved state is still there");

    // start resumes it.
    let started = ops::power::start(&ctx, &vm).unwrap();
    assert_eq!(started.result, "resumed");
    assert!(vm.dom.is_active().unwrap());
    assert!(!vm.dom.has_managed_save(0).unwrap(), "restored: libvirt removed the saved state");
    assert_eq!(state_in_list(&ctx, "sus"), "running");

    // destroy of a suspended VM removes the saved state with the domain.
    ops::suspend::suspend(&ctx, &vm).unwrap();
    ops::destroy::destroy(&ctx, &vm, false).unwrap();
    assert!(matches!(vms::lookup(&ctx.conn(), &name("sus")).unwrap(), vms::Lookup::Absent));
    assert_eq!(volumes(&pool(&ctx)), Vec::<String>::new());
}

#[test]
fn stop_force_discards_a_saved_state() {
    let ctx = ctx();
    let vm = define(&ctx, "dis", |_| {});
    vm.dom.create().unwrap();
    ops::suspend::suspend(&ctx, &vm).unwrap();
    let r = ops::power::stop(&ctx, &vm, std::time::Duration::from_secs(1), true).unwrap();
    assert_eq!(r.result, "discarded");
    assert!(!vm.dom.has_managed_save(0).unwrap());
    assert_eq!(vm.state(), vms::State::Shutoff);
}

#[test]
fn a_vm_libvirt_cannot_save_is_refused_up_front_and_keeps_running() {
    let ctx = ctx();
    let share: project_vm::spec::Share = "/srv/src:/mnt/src".parse().unwrap();
    let vm = define(&ctx, "shr", |s| s.shares = vec![share]);
    vm.dom.create().unwrap();
    let err = ops::suspend::suspend(&ctx, &vm).unwrap_err();
    assert_eq!(kind(&err), Kind::Invalid, "{err:#}");
    assert!(format!("{err:#}").contains("virtiofs"), "{err:#}");
    assert!(vm.dom.is_active().unwrap(), "still running");
    assert!(!vm.dom.has_managed_save(0).unwrap(), "nothing saved");

    let mut spec = vm.spec().unwrap();
    spec.shares.clear();
    assert_eq!(ops::suspend::unsavable(&spec), None);
    spec.hostdevs = vec!["0000:01:00.0".parse().unwrap()];
    assert!(ops::suspend::unsavable(&spec).unwrap().contains("passthrough"));
}

fn clone_req(n: &str) -> CloneRequest {
    CloneRequest { name: name(n), with_data: false, stop: false, identity: None }
}

/// Everything a clone refuses exits 2 and changes nothing: no volume, no
/// domain, the source as it was.
#[test]
fn a_clone_that_is_refused_changes_nothing() {
    let ctx = ctx();
    let src = define(&ctx, "src", |_| {});
    let other = define(&ctx, "taken", |_| {});
    let pool = pool(&ctx);
    let before = volumes(&pool);
    let domains = || {
        let mut d: Vec<String> = ctx.conn().list_all_domains(0).unwrap().iter().map(|d| d.name().unwrap()).collect();
        d.sort();
        d
    };
    let doms = domains();
    let refused = |req: &CloneRequest, what: &str| {
        let err = ops::clone::clone(&ctx, &src, req, &Progress::hidden()).unwrap_err();
        assert_eq!(kind(&err), Kind::Invalid, "{what}: {err:#}");
        assert_eq!(volumes(&pool), before, "{what}: volumes changed");
        assert_eq!(domains(), doms, "{what}: domains changed");
        format!("{err:#}")
    };
    // Onto an existing name, or its own.
    assert!(refused(&clone_req("taken"), "existing name").contains("already exists"));
    assert!(refused(&clone_req("src"), "its own name").contains("already exists"));
    // Someone else's volume in the way.
    storage::create_qcow2(&pool, "project-new-root.qcow2", 1 << 20).unwrap();
    let before_with = volumes(&pool);
    let err = ops::clone::clone(&ctx, &src, &clone_req("new"), &Progress::hidden()).unwrap_err();
    assert_eq!(kind(&err), Kind::Invalid, "{err:#}");
    assert_eq!(volumes(&pool), before_with);
    storage::delete(&pool, "project-new-root.qcow2").unwrap();
    // A running source, without --stop: its disk would not be consistent.
    src.dom.create().unwrap();
    assert!(refused(&clone_req("new"), "running source").contains("--stop"));
    // A suspended one: its disks belong with its saved memory.
    ops::suspend::suspend(&ctx, &src).unwrap();
    assert!(refused(&clone_req("new"), "suspended source").contains("suspended"));
    assert!(src.dom.has_managed_save(0).unwrap(), "the source is still suspended");
    drop(other);
}

#[test]
fn a_source_with_a_fixed_address_or_a_device_is_not_cloned() {
    let ctx = ctx();
    let fixed = define(&ctx, "fixed", |s| {
        s.network_config = Some(project_vm::spec::StaticNetwork {
            address: "10.0.0.5/24".parse().unwrap(),
            gateway: None,
            dns: vec![],
        })
    });
    let err = ops::clone::clone(&ctx, &fixed, &clone_req("new"), &Progress::hidden()).unwrap_err();
    assert_eq!(kind(&err), Kind::Invalid, "{err:#}");
    assert!(format!("{err:#}").contains("same address"), "{err:#}");
    assert!(matches!(vms::lookup(&ctx.conn(), &name("new")).unwrap(), vms::Lookup::Absent));
}

/// A clone killed after it claimed NEW leaves a `creating` record: the next
/// clone undoes it and starts over. Here that run then fails at the sealing
/// boot (a domain of someone else's holds its name; it is never touched),
/// and undoes its own work too: nothing of NEW is left either way.
#[test]
fn a_killed_clone_is_undone_by_the_next_one() {
    let ctx = ctx();
    let src = define(&ctx, "orig", |_| {});
    let pool = pool(&ctx);
    let before = volumes(&pool);
    // What a clone killed after its claim and copies leaves.
    let half = define(&ctx, "copy", |_| {});
    let mut own = half.own.clone();
    own.phase = Phase::Creating;
    own.write(&half.dom).unwrap();
    ctx.conn()
        .define_domain_xml("<domain type='test'><name>pvseal-orig</name><memory unit='MiB'>128</memory><os><type arch='x86_64'>hvm</type></os></domain>")
        .unwrap();
    let err = ops::clone::clone(&ctx, &src, &clone_req("copy"), &Progress::hidden()).unwrap_err();
    assert!(format!("{err:#}").contains("seal"), "{err:#}");
    assert!(matches!(vms::lookup(&ctx.conn(), &name("copy")).unwrap(), vms::Lookup::Absent), "{err:#}");
    assert_eq!(volumes(&pool), before, "{err:#}");
    assert!(ctx.conn().lookup_domain_by_name("pvseal-orig").is_ok(), "someone else's domain is left alone");
}

// ---- every verb sees the hosts of the declarative file ----

/// Runs the binary with a settings file of no hosts, the declarative file
/// `file` (through PROJECT_VM_FILE, or as ./project-vm.json in `cwd`), and
/// no --connect.
fn run_with_file(dir: &std::path::Path, file: Option<&std::path::Path>, args: &[&str]) -> Run {
    let settings = dir.join("settings.json");
    std::fs::write(&settings, "{}").unwrap();
    let mut c = std::process::Command::new(BIN);
    c.args(args)
        .current_dir(dir)
        .env("PROJECT_VM_CONFIG", &settings)
        .env("XDG_STATE_HOME", dir.join("state"))
        .env_remove("PROJECT_VM_URI")
        .env_remove("PROJECT_VM_HOST")
        .env_remove("PROJECT_VM_FILE")
        .stdin(Stdio::null());
    if let Some(f) = file {
        c.env("PROJECT_VM_FILE", f);
    }
    let out = c.output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        ms: 0,
    }
}

const FLEET_FILE: &str = r#"{"hosts": {"td": {"uri": "test:///default"}}, "vms": {}}"#;

#[test]
fn hosts_named_only_in_the_declarative_file_are_every_verbs_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.json");
    std::fs::write(&file, FLEET_FILE).unwrap();
    // Through PROJECT_VM_FILE: --host names a host of the file.
    let r = run_with_file(dir.path(), Some(&file), &["--host", "td", "list", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), "[]");
    // status looks on the file's host: no such VM there (3), not "no hosts" (2).
    let r = run_with_file(dir.path(), Some(&file), &["--host", "td", "status", "nope"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    // The default file in the working directory counts the same.
    std::fs::write(dir.path().join("project-vm.json"), FLEET_FILE).unwrap();
    let r = run_with_file(dir.path(), None, &["--host", "td", "list", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Without any file, there is no host of that name.
    std::fs::remove_file(dir.path().join("project-vm.json")).unwrap();
    let r = run_with_file(dir.path(), None, &["--host", "td", "list"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no hosts"), "{}", r.stderr);
}

#[test]
fn a_declarative_file_that_cannot_be_read_is_named_by_every_verb() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.json");
    std::fs::write(&file, r#"{"hosts": {"td": {"uri": 5}}, "vms": {}}"#).unwrap();
    let r = run_with_file(dir.path(), Some(&file), &["list"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("broken.json") && r.stderr.contains("every verb"), "{}", r.stderr);
}

// ---- on a booted guest ----

fn image() -> String {
    std::env::var("PROJECT_VM_TEST_IMAGE")
        .expect("PROJECT_VM_TEST_IMAGE is not set: run scripts/test.sh, which builds the image")
}

/// Cleans up at the end, and shows the guests' serial consoles on a failure.
struct Guard<'a> {
    env: &'a Env,
    vms: &'a [&'a str],
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for vm in self.vms {
                let serial = format!("/var/log/libvirt/qemu/project-{vm}-serial.log");
                eprintln!("===== {serial} (last 60 lines) =====\n{}", tail(&serial, 60));
            }
        }
        self.env.cleanup(self.vms);
    }
}

fn timing(what: &str, value: String) {
    eprintln!("TIMING {what}: {value}");
}

fn start_wait(env: &Env, name: &str) -> serde_json::Value {
    let r = env.run(&["start", name, "--wait", "--timeout", "900", "--json"]).ok().json();
    assert_eq!(r["ready"]["result"], "done", "{r}");
    r
}

#[test]
#[ignore = "boots guests; needs root, libvirtd and PROJECT_VM_TEST_IMAGE; run by scripts/test.sh"]
fn a_suspended_vm_resumes_where_it_was_and_a_clone_is_a_new_machine() {
    require_root_libvirt();
    // One guest at a time (held until the end: dropped last).
    let _lock = guest_boot_lock();
    let img = image();
    let env = Env::new("day2", 22900, serde_json::json!({"base_image": "debian"}));
    let _guard = Guard { env: &env, vms: &["d2c", "d2"] };
    env.run(&["image", "import", &img, "--name", "debian"]).ok();
    // watch follows d2 from before it exists to after it is gone.
    // (Killed if the test fails before it is interrupted.)
    let mut watcher = KillOnDrop(
        env.cmd(&["watch", "d2", "--json"]).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap(),
    );
    let events = lines_of(&mut watcher.0);
    env.run(&["create", "d2", "1G", "2", "8G", "--project-disk", "1G"]).ok();
    start_wait(&env, "d2");
    env.ssh("d2", "echo mine | sudo tee /project/marker >/dev/null && sync");

    // 1. A process holds a file it wrote before the suspend.
    let pid = env.ssh(
        "d2",
        "nohup sh -c 'exec 3>/tmp/held; echo before >&3; exec sleep 100000' >/dev/null 2>&1 </dev/null & echo $!",
    );
    let pid = pid.trim().to_owned();
    let boot = env.ssh("d2", "cat /proc/sys/kernel/random/boot_id").trim().to_owned();
    let r = env.run(&["suspend", "d2", "--json"]).ok().json();
    assert_eq!(r["result"], "suspended", "{r}");
    timing("suspend", format!("{:.1} s", r["seconds"].as_f64().unwrap()));
    let list = env.run(&["list", "--json"]).ok().json();
    assert_eq!(list[0]["state"], "suspended", "{list}");
    assert_eq!(env.run(&["status", "d2", "--json"]).ok().json()["state"], "suspended");
    // A clone of a suspended VM is refused (exit 2), and so is a plain stop.
    assert_eq!(env.run(&["clone", "d2", "d2c"]).code, 2);
    assert_eq!(env.run(&["stop", "d2"]).code, 2);
    let resumed = start_wait(&env, "d2");
    assert_eq!(resumed["start"]["result"], "resumed", "{resumed}");
    assert_eq!(resumed["ready"]["boot_id"].as_str(), Some(boot.as_str()), "{resumed}");
    timing("resume (start --wait)", format!("{:.1} s", resumed["ready"]["waited_s"].as_f64().unwrap()));
    assert_eq!(env.ssh("d2", "cat /proc/sys/kernel/random/boot_id").trim(), boot, "the same boot");
    let held = env.ssh("d2", &format!("readlink /proc/{pid}/fd/3 && cat /proc/{pid}/fd/3"));
    assert_eq!(held.lines().collect::<Vec<_>>(), vec!["/tmp/held", "before"], "{held}");

    // 2. Clone: a running source is refused without --stop, nothing made.
    let vols = env.vm_volumes();
    assert_eq!(env.run(&["clone", "d2", "d2c"]).code, 2);
    assert_eq!(env.vm_volumes(), vols);
    let machine = env.ssh("d2", "cat /etc/machine-id");
    let key = env.ssh("d2", "sudo -n cat /etc/ssh/ssh_host_ed25519_key.pub");
    let c = env.run(&["clone", "d2", "d2c", "--stop", "--json"]).ok().json();
    assert_eq!((c["restarted"].as_bool(), c["data_copied"].as_bool()), (Some(true), Some(false)), "{c}");
    timing("clone (copy, seal boot)", format!("{} ms", c["elapsed_ms"]));
    // Onto a name that exists now: exit 2.
    assert_eq!(env.run(&["clone", "d2", "d2c", "--stop"]).code, 2);
    start_wait(&env, "d2c");
    assert_eq!(env.ssh("d2c", "hostname").trim(), "project-d2c");
    let c_machine = env.ssh("d2c", "cat /etc/machine-id");
    assert!(!c_machine.trim().is_empty() && c_machine != machine, "machine-id {c_machine} (source: {machine})");
    // ssh verified the clone against its own pinned key, not the source's.
    assert_ne!(env.ssh("d2c", "sudo -n cat /etc/ssh/ssh_host_ed25519_key.pub"), key);
    let mnt = env.ssh("d2c", "findmnt -no FSTYPE,LABEL /project");
    assert_eq!(mnt.split_whitespace().collect::<Vec<_>>(), vec!["ext4", "project"], "{mnt}");
    assert_eq!(env.ssh("d2c", "test -e /project/marker && echo copied || echo fresh").trim(), "fresh");
    let macs: Vec<String> = ["project-d2", "project-d2c"]
        .iter()
        .map(|d| String::from_utf8(virsh(&["domiflist", d]).stdout).unwrap())
        .collect();
    assert_ne!(macs[0], macs[1]);
    // The source is as it was, with its data.
    start_wait(&env, "d2");
    assert_eq!(env.ssh("d2", "cat /etc/machine-id"), machine);
    assert_eq!(env.ssh("d2", "cat /project/marker").trim(), "mine");

    // 3. destroy of a suspended VM removes its saved state.
    env.run(&["suspend", "d2"]).ok();
    env.run(&["destroy", "d2c"]).ok();
    env.run(&["destroy", "d2"]).ok();
    assert!(!std::path::Path::new("/var/lib/libvirt/qemu/save/project-d2.save").exists());
    assert_eq!(env.vm_volumes(), Vec::<String>::new());

    // 4. watch saw d2 defined, started, suspended (saved), resumed
    // (restored) and, at the end, undefined, in that order.
    let seen = watched(&events, "d2", "undefined", Duration::from_secs(20));
    let _ = interrupt(&mut watcher.0);
    eprintln!("watch saw: {seen:?}");
    let order = ["defined", "started", "suspended", "resumed", "undefined"];
    assert!(in_order(&seen, &order), "watch saw {seen:?}, expected {order:?} in that order");
    assert!(seen.contains(&("suspended".into(), "saved".into())), "{seen:?}");
    assert!(seen.contains(&("resumed".into(), "restored".into())), "{seen:?}");
}

#[test]
fn suspend_all_saves_every_running_vm_and_start_suspended_resumes_them() {
    let ctx = ctx();
    let up: Vec<_> = ["all1", "all2"].iter().map(|n| define(&ctx, n, |_| {})).collect();
    for vm in &up {
        vm.dom.create().unwrap();
    }
    let off = define(&ctx, "all3", |_| {});
    let fleet = ops::fleet::Fleet::of(std::sync::Arc::new(ctx));
    let saved = ops::suspend::suspend_all(&fleet, None).unwrap();
    assert!(saved.failed.is_empty(), "{:?}", saved.failed);
    assert_eq!(saved.suspended.len(), 2, "the running two, not the stopped one");
    assert!(up.iter().all(|vm| vm.dom.has_managed_save(0).unwrap()));
    assert!(!off.dom.has_managed_save(0).unwrap());
    let resumed = ops::suspend::resume_all(&fleet, None).unwrap();
    assert!(resumed.failed.is_empty(), "{:?}", resumed.failed);
    assert_eq!(resumed.resumed, vec!["all1".to_string(), "all2".to_string()]);
    assert!(up.iter().all(|vm| vm.dom.is_active().unwrap()));
    assert!(!off.dom.is_active().unwrap(), "a VM that was stopped stays stopped");
}
