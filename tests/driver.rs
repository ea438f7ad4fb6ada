//! Command logic on libvirt's built-in test driver (`test:///default`): no
//! daemon, fresh state per connection. It cannot upload volumes, so a full
//! `create` fails at the seed upload here: that is used to check the rollback.
//! The real path is covered by tests/host.rs and tests/e2e.rs.

use project_vm::error::exit_code;
use project_vm::libvirt::{self, domain_xml, metadata::{Ownership, Phase}, storage, vms};
use project_vm::ops::{self, create::CreateRequest, Ctx};
use project_vm::progress::Progress;
use project_vm::settings::{Accel, HostSettings, Network};
use project_vm::spec::{Resources, Size, VmName, VmSpec};

fn ctx() -> Ctx {
    let settings = HostSettings {
        storage_dir: Some("/project-vm-test".into()),
        pool: Some("pv".into()),
        base_image: Some("base.qcow2".into()),
        accel: Some(Accel::Tcg),
        network: Some(Network::User { ssh_port: 22022 }),
        ssh_authorized_keys: Some(vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake test".into()]),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    // A node file of our own: test:///default is one state shared by every
    // connection in the process, and tests run on parallel threads.
    let dir = tempfile::tempdir().unwrap().keep();
    let node = dir.join("node.xml");
    std::fs::write(&node, "<node><cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads><active>2</active><mhz>2000</mhz></cpu><memory>8388608</memory></node>").unwrap();
    let uri = format!("test://{}", node.display());
    let conn = libvirt::connect(&uri).unwrap();
    Ctx { conn, uri, settings, json: true }
}

fn with_base_image(ctx: &Ctx) -> virt::storage_pool::StoragePool {
    let pool = storage::ensure_pool(&ctx.conn, &ctx.settings).unwrap();
    storage::create_qcow2(&pool, "base.qcow2", 1 << 30).unwrap();
    pool
}

fn name(s: &str) -> VmName {
    VmName::parse(s).unwrap()
}

fn request(n: &str) -> CreateRequest {
    CreateRequest {
        name: name(n),
        resources: Resources { memory: Size(1 << 30), cpus: 1, disk: Size(5 << 30), project_disk: Size(2 << 30) },
        image: None,
        user_data: None,
        features: vec![],
        autostart: false,
    }
}

fn volumes(pool: &virt::storage_pool::StoragePool) -> Vec<String> {
    let mut v = pool.list_volumes().unwrap();
    v.sort();
    v
}

/// Defines a VM the way `create` records it, without needing uploads.
fn define_owned(ctx: &Ctx, pool: &virt::storage_pool::StoragePool, n: &str, phase: Phase) -> VmName {
    let n = name(n);
    let spec = VmSpec {
        name: n.clone(),
        resources: request(n.as_str()).resources,
        base_image: "base.qcow2".into(),
        accel: Accel::Tcg,
        network: Network::User { ssh_port: 22022 },
        ssh_user: "dev".into(),
        ssh_port: Some(22022),
        tailnet: None,
        autostart: false,
        features: vec![],
        cloud_init_hash: String::new(),
    };
    let own = Ownership {
        xmlns: None,
        version: 1,
        name: n.to_string(),
        phase,
        pool: ctx.settings.pool.clone(),
        root_volume: n.root_volume(),
        data_volume: n.data_volume(),
        seed_volume: Some(n.seed_volume()),
        created: 1,
        host_key: Some("ssh-ed25519 AAAA test".into()),
        spec_json: serde_json::to_string(&spec).unwrap(),
    };
    for v in [n.root_volume(), n.data_volume(), n.seed_volume()] {
        storage::create_qcow2(pool, &v, 1 << 20).unwrap();
    }
    ctx.conn.define_domain_xml(&domain_xml::build(&spec, &own, None).to_xml()).unwrap();
    n
}

fn define_foreign(ctx: &Ctx, domain: &str) {
    ctx.conn
        .define_domain_xml(&format!(
            "<domain type='test'><name>{domain}</name><memory unit='MiB'>128</memory><os><type arch='x86_64'>hvm</type></os></domain>"
        ))
        .unwrap();
}

#[test]
fn a_create_that_fails_part_way_removes_what_it_made() {
    let ctx = ctx();
    let pool = with_base_image(&ctx);
    let before = volumes(&pool);
    let err = ops::create::create(&ctx, &request("foo"), &Progress::hidden()).unwrap_err();
    // The test driver refuses uploads, so the seed step fails after the domain,
    // the root overlay and the project disk were made.
    assert!(format!("{err:#}").contains("seed"), "{err:#}");
    assert!(matches!(vms::lookup(&ctx.conn, &name("foo")).unwrap(), vms::Lookup::Absent), "domain left behind");
    assert_eq!(volumes(&pool), before, "volumes left behind");
}

#[test]
fn a_failed_create_never_deletes_a_reattached_project_disk() {
    let ctx = ctx();
    let pool = with_base_image(&ctx);
    storage::create_qcow2(&pool, "project-foo-data.qcow2", 2 << 30).unwrap();
    let before = volumes(&pool);
    ops::create::create(&ctx, &request("foo"), &Progress::hidden()).unwrap_err();
    assert_eq!(volumes(&pool), before);
    assert!(volumes(&pool).contains(&"project-foo-data.qcow2".to_string()));
}

#[test]
fn a_domain_without_our_metadata_is_never_touched() {
    let ctx = ctx();
    let pool = with_base_image(&ctx);
    define_foreign(&ctx, "project-hand");
    assert!(matches!(vms::lookup(&ctx.conn, &name("hand")).unwrap(), vms::Lookup::Foreign));
    let err = vms::get(&ctx.conn, &name("hand")).err().unwrap();
    assert_eq!(exit_code(&err), 2);
    assert!(err.to_string().contains("not created by project-vm"), "{err}");
    let err = ops::create::create(&ctx, &request("hand"), &Progress::hidden()).unwrap_err();
    assert_eq!(exit_code(&err), 2, "{err:#}");
    assert!(vms::list(&ctx.conn).unwrap().is_empty(), "list shows only project-vm's VMs");
    assert!(ctx.conn.lookup_domain_by_name("project-hand").is_ok(), "still there");
    assert_eq!(volumes(&pool), vec!["base.qcow2".to_string()]);
}

#[test]
fn bad_input_changes_nothing() {
    let ctx = ctx();
    // No pool, no image: a missing base image is reported before anything is made.
    let err = ops::create::create(&ctx, &request("foo"), &Progress::hidden()).unwrap_err();
    assert_eq!(exit_code(&err), 2);
    assert!(err.to_string().contains("base image \"base.qcow2\""), "{err}");
    assert!(storage::find_pool(&ctx.conn, "pv").unwrap().is_none(), "pool created for a failing create");

    let pool = with_base_image(&ctx);
    let mut req = request("foo");
    req.resources.memory = Size(1 << 20);
    let err = ops::create::create(&ctx, &req, &Progress::hidden()).unwrap_err();
    assert_eq!(exit_code(&err), 2);
    assert!(err.to_string().contains("memory"), "{err}");

    let mut req = request("foo");
    req.resources.disk = Size(512 << 20);
    let err = ops::create::create(&ctx, &req, &Progress::hidden()).unwrap_err();
    assert_eq!(exit_code(&err), 2);
    assert!(err.to_string().contains("smaller than the base image"), "{err}");

    // A stray volume with one of our names: refused, not adopted or deleted.
    storage::create_qcow2(&pool, "project-foo-root.qcow2", 1 << 20).unwrap();
    let err = ops::create::create(&ctx, &request("foo"), &Progress::hidden()).unwrap_err();
    assert_eq!(exit_code(&err), 2);
    assert!(err.to_string().contains("no VM foo owns it"), "{err}");
    assert!(volumes(&pool).contains(&"project-foo-root.qcow2".to_string()));
    assert!(matches!(vms::lookup(&ctx.conn, &name("foo")).unwrap(), vms::Lookup::Absent));
}

#[test]
fn duplicate_and_interrupted_creates_are_refused_with_the_fix() {
    let ctx = ctx();
    let pool = with_base_image(&ctx);
    define_owned(&ctx, &pool, "foo", Phase::Ready);
    let err = ops::create::create(&ctx, &request("foo"), &Progress::hidden()).unwrap_err();
    assert_eq!(exit_code(&err), 2);
    assert!(err.to_string().contains("already exists"), "{err}");

    define_owned(&ctx, &pool, "half", Phase::Creating);
    let err = ops::create::create(&ctx, &request("half"), &Progress::hidden()).unwrap_err();
    assert!(err.to_string().contains("did not finish") && err.to_string().contains("destroy half --keep-data"), "{err}");
}

#[test]
fn destroy_deletes_exactly_the_recorded_volumes() {
    let ctx = ctx();
    let pool = with_base_image(&ctx);
    storage::create_qcow2(&pool, "someone-elses.qcow2", 1 << 20).unwrap();
    let foo = define_owned(&ctx, &pool, "foo", Phase::Ready);
    let bar = define_owned(&ctx, &pool, "bar", Phase::Ready);

    let listed: Vec<String> = ops::list::list(&ctx).unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(listed, vec!["bar", "foo"]);

    let vm = vms::get(&ctx.conn, &foo).unwrap();
    let report = ops::destroy::destroy(&ctx, &vm, true).unwrap();
    assert_eq!(report.deleted_volumes, vec!["project-foo-root.qcow2", "project-foo-seed.iso"]);
    assert_eq!(report.kept_data_volume.as_deref(), Some("project-foo-data.qcow2"));
    assert!(matches!(vms::lookup(&ctx.conn, &foo).unwrap(), vms::Lookup::Absent));

    let vm = vms::get(&ctx.conn, &bar).unwrap();
    ops::destroy::destroy(&ctx, &vm, false).unwrap();
    assert_eq!(volumes(&pool), vec!["base.qcow2", "project-foo-data.qcow2", "someone-elses.qcow2"]);
}

#[test]
fn status_reports_disks_and_the_ssh_target() {
    let ctx = ctx();
    let pool = with_base_image(&ctx);
    let foo = define_owned(&ctx, &pool, "foo", Phase::Ready);
    let vm = vms::get(&ctx.conn, &foo).unwrap();
    let s = ops::status::status(&ctx, &vm).unwrap();
    assert_eq!(s.vcpus, 1);
    assert_eq!(s.memory, 1 << 30);
    assert_eq!(s.disks.iter().map(|d| d.role).collect::<Vec<_>>(), vec!["root", "data", "seed"]);
    assert!(s.disks.iter().all(|d| d.exists));
    let ssh = s.ssh.unwrap();
    assert_eq!((ssh.host.as_str(), ssh.port), ("127.0.0.1", 22022));
    let json = serde_json::to_value(ops::list::list(&ctx).unwrap()).unwrap();
    assert_eq!(json[0]["name"], "foo");
    assert_eq!(json[0]["domain"], "project-foo");
    assert_eq!(json[0]["state"], "shutoff");
}

#[test]
fn stop_and_start_report_what_happened() {
    let ctx = ctx();
    let pool = with_base_image(&ctx);
    let foo = define_owned(&ctx, &pool, "foo", Phase::Ready);
    let vm = vms::get(&ctx.conn, &foo).unwrap();
    assert_eq!(ops::power::start(&ctx, &vm).unwrap().result, "started");
    assert_eq!(ops::power::start(&ctx, &vm).unwrap().result, "already-running");
    // The test driver's guests obey ACPI shutdown at once.
    let r = ops::power::stop(&ctx, &vm, std::time::Duration::from_secs(5), false).unwrap();
    assert_eq!(r.result, "graceful");
    assert_eq!(ops::power::stop(&ctx, &vm, std::time::Duration::from_secs(5), false).unwrap().result, "already-stopped");
    ops::power::start(&ctx, &vm).unwrap();
    assert_eq!(ops::power::stop(&ctx, &vm, std::time::Duration::from_secs(5), true).unwrap().result, "forced");
}

#[test]
fn metadata_round_trips_through_libvirt() {
    let ctx = ctx();
    let pool = with_base_image(&ctx);
    let foo = define_owned(&ctx, &pool, "foo", Phase::Creating);
    let vm = vms::get(&ctx.conn, &foo).unwrap();
    assert_eq!(vm.own.phase, Phase::Creating);
    let mut own = vm.own.clone();
    own.phase = Phase::Ready;
    own.seed_volume = None;
    own.write(&vm.dom).unwrap();
    let again = vms::get(&ctx.conn, &foo).unwrap();
    assert_eq!(again.own.phase, Phase::Ready);
    assert_eq!(again.own.seed_volume, None);
    assert_eq!(again.spec().unwrap().name, foo);
}
