//! Command logic on libvirt's built-in test driver (`test:///default`): no
//! daemon, fresh state per connection. It cannot upload volumes, so a full
//! `create` fails at the seed upload here: that is used to check the rollback.
//! The real path is covered by tests/host.rs and tests/e2e.rs.

mod common;

use project_vm::exit::code as exit_code;
use project_vm::libvirt::{
    domain_xml,
    metadata::{Ownership, Phase},
    storage, vms,
};
use project_vm::ops::{self, create::CreateRequest, fleet::Fleet, Ctx};
use project_vm::progress::Progress;
use project_vm::spec::{Size, VmName, VmSpec};

use std::path::Path;
use std::sync::Arc;

use project_vm::config;
use project_vm::ops::apply::{self, ApplyOptions};
use project_vm::ops::plan::{self, Action, ChangeClass};

fn ctx() -> Ctx {
    common::driver::driver_ctx()
}

fn with_base_image(ctx: &Ctx) -> virt::storage_pool::StoragePool {
    let pool = storage::ensure_pool(&ctx.conn(), &ctx.uri, &ctx.settings).unwrap();
    storage::create_qcow2(&pool, "base.qcow2", 1 << 30).unwrap();
    pool
}

fn name(s: &str) -> VmName {
    VmName::parse(s).unwrap()
}

fn request(n: &str) -> CreateRequest {
    common::driver::request(n)
}

fn volumes(pool: &virt::storage_pool::StoragePool) -> Vec<String> {
    let mut v = pool.list_volumes().unwrap();
    v.sort();
    v
}

/// Defines a VM the way `create` records it, without needing uploads.
fn define_owned(ctx: &Ctx, pool: &virt::storage_pool::StoragePool, n: &str, phase: Phase) -> VmName {
    let n = name(n);
    // Exactly what create would record, so a matching file plans nothing.
    let keys = ctx.settings.authorized_keys().unwrap();
    let spec: VmSpec = ops::create::desired_spec(ctx, &request(n.as_str()), &keys, "base.qcow2".into(), Some(22022));
    let own = Ownership {
        xmlns: None,
        version: 1,
        name: n.to_string(),
        uuid: None,
        phase,
        pool: ctx.settings.pool.clone(),
        root_volume: n.root_volume(),
        data_volume: n.data_volume(),
        data_kept: false,
        seed_volume: Some(n.seed_volume()),
        created: 1,
        host_key: Some("ssh-ed25519 AAAA test".into()),
        spec_json: serde_json::to_string(&spec).unwrap(),
    };
    storage::create_qcow2(pool, &n.root_volume(), spec.resources.disk.bytes()).unwrap();
    storage::create_qcow2(pool, &n.data_volume(), spec.resources.project_disk.bytes()).unwrap();
    storage::create_qcow2(pool, &n.seed_volume(), 1 << 20).unwrap();
    ctx.conn().define_domain_xml(&domain_xml::build(&spec, &own, &domain_xml::HostFiles::default()).to_xml()).unwrap();
    n
}

/// A context with the base image and VM `n` defined as create records it, in `phase`.
fn with_vm(n: &str, phase: Phase) -> (Ctx, virt::storage_pool::StoragePool, VmName, vms::Vm) {
    let ctx = ctx();
    let pool = with_base_image(&ctx);
    let name = define_owned(&ctx, &pool, n, phase);
    let vm = vms::get(&ctx.conn(), &name).unwrap();
    (ctx, pool, name, vm)
}

fn define_foreign(ctx: &Ctx, domain: &str) {
    ctx.conn()
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
    assert!(matches!(vms::lookup(&ctx.conn(), &name("foo")).unwrap(), vms::Lookup::Absent), "domain left behind");
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
    assert!(matches!(vms::lookup(&ctx.conn(), &name("hand")).unwrap(), vms::Lookup::Foreign(None)));
    let err = vms::get(&ctx.conn(), &name("hand")).err().unwrap();
    assert_eq!(exit_code(&err), 2);
    assert!(err.to_string().contains("not created by project-vm"), "{err}");
    let err = ops::create::create(&ctx, &request("hand"), &Progress::hidden()).unwrap_err();
    assert_eq!(exit_code(&err), 2, "{err:#}");
    assert!(vms::list(&ctx.conn()).unwrap().is_empty(), "list shows only project-vm's VMs");
    assert!(ctx.conn().lookup_domain_by_name("project-hand").is_ok(), "still there");
    assert_eq!(volumes(&pool), vec!["base.qcow2".to_string()]);
}

#[test]
fn bad_input_changes_nothing() {
    let ctx = ctx();
    // No pool, no image: a missing base image is reported before anything is made.
    let err = ops::create::create(&ctx, &request("foo"), &Progress::hidden()).unwrap_err();
    assert_eq!(exit_code(&err), 2);
    assert!(err.to_string().contains("no image base.qcow2 in pool pv"), "{err}");
    assert!(storage::find_pool(&ctx.conn(), "pv").unwrap().is_none(), "pool created for a failing create");

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
    assert!(matches!(vms::lookup(&ctx.conn(), &name("foo")).unwrap(), vms::Lookup::Absent));
}

#[test]
fn duplicate_creates_are_refused_and_interrupted_ones_are_redone() {
    let ctx = ctx();
    let pool = with_base_image(&ctx);
    define_owned(&ctx, &pool, "foo", Phase::Ready);
    let err = ops::create::create(&ctx, &request("foo"), &Progress::hidden()).unwrap_err();
    assert_eq!(exit_code(&err), 2);
    assert!(err.to_string().contains("already exists"), "{err}");

    // A create killed part-way left a `creating` record: the next create
    // undoes it and starts over (here it then fails at the seed, which the
    // test driver cannot upload, and rolls its own work back).
    define_owned(&ctx, &pool, "half", Phase::Creating);
    let err = ops::create::create(&ctx, &request("half"), &Progress::hidden()).unwrap_err();
    assert!(format!("{err:#}").contains("seed"), "{err:#}");
    assert!(matches!(vms::lookup(&ctx.conn(), &name("half")).unwrap(), vms::Lookup::Absent));
    assert!(volumes(&pool).iter().all(|v| !v.contains("half")), "{:?}", volumes(&pool));
}

#[test]
fn destroy_deletes_exactly_the_recorded_volumes() {
    let ctx = ctx();
    let pool = with_base_image(&ctx);
    storage::create_qcow2(&pool, "someone-elses.qcow2", 1 << 20).unwrap();
    let foo = define_owned(&ctx, &pool, "foo", Phase::Ready);
    let bar = define_owned(&ctx, &pool, "bar", Phase::Ready);

    let listed: Vec<String> = ops::list::list(&ctx, false).unwrap().0.into_iter().map(|e| e.name).collect();
    assert_eq!(listed, vec!["bar", "foo"]);

    let vm = vms::get(&ctx.conn(), &foo).unwrap();
    let report = ops::destroy::destroy(&ctx, &vm, true).unwrap();
    assert_eq!(report.deleted_volumes, vec!["project-foo-root.qcow2", "project-foo-seed.iso"]);
    assert_eq!(report.kept_data_volume.as_deref(), Some("project-foo-data.qcow2"));
    assert!(matches!(vms::lookup(&ctx.conn(), &foo).unwrap(), vms::Lookup::Absent));

    let vm = vms::get(&ctx.conn(), &bar).unwrap();
    ops::destroy::destroy(&ctx, &vm, false).unwrap();
    // The kept disk carries its marker; someone else's volume is untouched.
    assert_eq!(
        volumes(&pool),
        vec!["base.qcow2", "project-foo-data.qcow2", "project-foo-data.qcow2.kept", "someone-elses.qcow2"]
    );
}

#[test]
fn status_reports_disks_and_the_ssh_target() {
    let (ctx, _pool, _foo, vm) = with_vm("foo", Phase::Ready);
    let s = ops::status::status(&ctx, &vm).unwrap();
    assert_eq!(s.vcpus, 1);
    assert_eq!(s.memory, 1 << 30);
    assert_eq!(s.disks.iter().map(|d| d.role).collect::<Vec<_>>(), vec!["root", "data", "seed"]);
    assert!(s.disks.iter().all(|d| d.exists));
    assert_eq!(serde_json::to_value(&s).unwrap()["host"], ctx.uri.as_str(), "status --json names the VM's host");
    let ssh = s.ssh.unwrap();
    assert_eq!((ssh.host.as_str(), ssh.port), ("127.0.0.1", 22022));
    let json = serde_json::to_value(ops::list::list(&ctx, false).unwrap()).unwrap();
    assert_eq!(json[0]["name"], "foo");
    assert_eq!(json[0]["domain"], "project-foo");
    assert_eq!(json[0]["state"], "shutoff");
}

#[test]
fn stop_and_start_report_what_happened() {
    let (ctx, _pool, _foo, vm) = with_vm("foo", Phase::Ready);
    assert_eq!(ops::power::start(&ctx, &vm).unwrap().result, "started");
    assert_eq!(ops::power::start(&ctx, &vm).unwrap().result, "already-running");
    // The test driver's guests obey ACPI shutdown at once.
    let r = ops::power::stop(&ctx, &vm, std::time::Duration::from_secs(5), false).unwrap();
    assert_eq!(r.result, "graceful");
    assert_eq!(
        ops::power::stop(&ctx, &vm, std::time::Duration::from_secs(5), false).unwrap().result,
        "already-stopped"
    );
    ops::power::start(&ctx, &vm).unwrap();
    assert_eq!(ops::power::stop(&ctx, &vm, std::time::Duration::from_secs(5), true).unwrap().result, "forced");
}

#[test]
fn metadata_round_trips_through_libvirt() {
    let (ctx, _pool, foo, vm) = with_vm("foo", Phase::Creating);
    assert_eq!(vm.own.phase, Phase::Creating);
    let mut own = vm.own.clone();
    own.phase = Phase::Ready;
    own.seed_volume = None;
    own.write(&vm.dom).unwrap();
    let again = vms::get(&ctx.conn(), &foo).unwrap();
    assert_eq!(again.own.phase, Phase::Ready);
    assert_eq!(again.own.seed_volume, None);
    assert_eq!(again.spec().unwrap().name, foo);
}

fn declared(json: &str) -> config::Declared {
    config::parse(json, "test.json", Path::new("/")).unwrap()
}

fn opts(prune: bool) -> ApplyOptions {
    ApplyOptions {
        plan: plan::Options { prune, ..Default::default() },
        jobs: 4,
        wait: false,
        timeout: std::time::Duration::from_secs(5),
        delete_data: false,
    }
}

const FOO_1G: &str = r#"{"vms": {"foo": {"memory": "1G", "cpus": 1, "disk": "5G", "project_disk": "2G"}}}"#;

#[test]
fn apply_is_idempotent_and_converges_changes() {
    let ctx = Arc::new(ctx());
    let pool = with_base_image(&ctx);
    let foo = define_owned(&ctx, &pool, "foo", Phase::Ready);
    let dom = ctx.conn().lookup_domain_by_name("project-foo").unwrap();
    let (uuid, xml) = (dom.uuid_string().unwrap(), dom.xml_desc(0).unwrap());

    // The same state: nothing to do, nothing redefined.
    let p = plan::plan(&ctx, &declared(FOO_1G), plan::Options::default()).unwrap();
    assert_eq!((p.changes, p.not_applied, p.impossible), (0, 0, 0), "{p:#?}");
    let r = apply::apply(&Fleet::of(ctx.clone()), &declared(FOO_1G), opts(false), None).unwrap();
    assert_eq!(r.changes, 0);
    let dom = ctx.conn().lookup_domain_by_name("project-foo").unwrap();
    assert_eq!((dom.uuid_string().unwrap(), dom.xml_desc(0).unwrap()), (uuid.clone(), xml));

    // More memory, a bigger project disk, autostart.
    let changed =
        r#"{"vms": {"foo": {"memory": "2G", "cpus": 1, "disk": "5G", "project_disk": "4G", "autostart": true}}}"#;
    let p = plan::plan(&ctx, &declared(changed), plan::Options::default()).unwrap();
    let classes: Vec<(&str, ChangeClass)> = p.vms[0].changes().iter().map(|c| (c.field(), c.class())).collect();
    assert_eq!(
        classes,
        vec![("memory", ChangeClass::NextRestart), ("autostart", ChangeClass::Now), ("project_disk", ChangeClass::Now)]
    );
    assert!(p.vms[0].start());
    // The test driver cannot resize volumes (the e2e suite grows real disks):
    // apply the rest here.
    let changed =
        r#"{"vms": {"foo": {"memory": "2G", "cpus": 1, "disk": "5G", "project_disk": "2G", "autostart": true}}}"#;
    let r = apply::apply(&Fleet::of(ctx.clone()), &declared(changed), opts(false), None).unwrap();
    assert_eq!((r.changes, r.failed), (1, 0), "{:?}", r.results);
    assert_eq!(r.results[0].done, vec!["autostart on", "redefined", "started"]);
    let dom = ctx.conn().lookup_domain_by_name("project-foo").unwrap();
    assert_eq!(dom.uuid_string().unwrap(), uuid, "redefined in place");
    assert!(dom.xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE).unwrap().contains("<memory unit='KiB'>2097152</memory>"));
    assert!(dom.autostart().unwrap());
    assert!(dom.is_active().unwrap(), "autostart VMs are started");
    // Converged: a second apply changes nothing.
    let again = plan::plan(&ctx, &declared(changed), plan::Options::default()).unwrap();
    assert_eq!(again.changes, 0, "{:#?}", again.vms);
    assert_eq!(vms::get(&ctx.conn(), &foo).unwrap().spec().unwrap().resources.memory, Size(2 << 30));
}

#[test]
fn impossible_changes_refuse_the_whole_apply() {
    let ctx = Arc::new(ctx());
    let pool = with_base_image(&ctx);
    define_owned(&ctx, &pool, "foo", Phase::Ready);
    let xml = ctx.conn().lookup_domain_by_name("project-foo").unwrap().xml_desc(0).unwrap();
    let shrink = r#"{"vms": {"foo": {"memory": "2G", "cpus": 1, "disk": "5G", "project_disk": "1G"}}}"#;
    let p = plan::plan(&ctx, &declared(shrink), plan::Options::default()).unwrap();
    assert_eq!(p.impossible, 1);
    let err = apply::apply(&Fleet::of(ctx.clone()), &declared(shrink), opts(false), None).unwrap_err();
    assert_eq!(exit_code(&err), 2);
    assert!(err.to_string().contains("project_disk 2G -> 1G"), "{err}");
    assert_eq!(
        ctx.conn().lookup_domain_by_name("project-foo").unwrap().xml_desc(0).unwrap(),
        xml,
        "the memory change was not applied either"
    );
}

#[test]
fn changed_cloud_init_is_reported_not_ignored() {
    let ctx = Arc::new(ctx());
    let pool = with_base_image(&ctx);
    define_owned(&ctx, &pool, "foo", Phase::Ready);
    let with_feature =
        r#"{"vms": {"foo": {"memory": "1G", "cpus": 1, "disk": "5G", "project_disk": "2G", "features": ["docker"]}}}"#;
    let p = plan::plan(&ctx, &declared(with_feature), plan::Options::default()).unwrap();
    assert_eq!((p.changes, p.not_applied), (0, 1));
    assert_eq!(p.vms[0].changes()[0].class(), ChangeClass::NotApplied);
    let p = plan::plan(&ctx, &declared(with_feature), plan::Options { recreate: true, ..Default::default() }).unwrap();
    assert!(p.vms[0].recreate() && p.changes == 1);
}

#[test]
fn reconfigure_plans_the_cloud_init_change_in_place() {
    let ctx = Arc::new(ctx());
    let pool = with_base_image(&ctx);
    define_owned(&ctx, &pool, "foo", Phase::Ready);
    let with_feature =
        r#"{"vms": {"foo": {"memory": "1G", "cpus": 1, "disk": "5G", "project_disk": "2G", "features": ["docker"]}}}"#;
    let opts = plan::Options { reconfigure: true, ..Default::default() };
    let p = plan::plan(&ctx, &declared(with_feature), opts).unwrap();
    assert_eq!((p.changes, p.not_applied), (1, 0));
    assert!(p.vms[0].reconfigure() && !p.vms[0].recreate(), "{:?}", p.vms[0]);
    assert!(p.vms[0].changes()[0].by_reconfigure());
    assert!(project_vm::ops::plan::describe(&p.vms[0])[0].contains("reconfigure"));
    // A file that changes no cloud-init reconfigures nothing.
    let same = r#"{"vms": {"foo": {"memory": "1G", "cpus": 1, "disk": "5G", "project_disk": "2G"}}}"#;
    let p = plan::plan(&ctx, &declared(same), opts).unwrap();
    assert!(!p.vms[0].reconfigure(), "{:?}", p.vms[0]);
}

#[test]
fn apply_carries_out_what_the_plan_applies_and_nothing_it_does_not() {
    let ctx = Arc::new(ctx());
    let pool = with_base_image(&ctx);
    let foo = define_owned(&ctx, &pool, "foo", Phase::Ready);
    let before = vms::get(&ctx.conn(), &foo).unwrap().spec().unwrap();
    // More memory (next restart) and a feature (cloud-init: not applied).
    let file =
        r#"{"vms": {"foo": {"memory": "2G", "cpus": 1, "disk": "5G", "project_disk": "2G", "features": ["docker"]}}}"#;
    let r = apply::apply(&Fleet::of(ctx.clone()), &declared(file), opts(false), None).unwrap();
    assert_eq!((r.changes, r.failed), (1, 0), "{:?}", r.results);
    assert_eq!(r.results[0].done, vec!["redefined"]);
    let after = vms::get(&ctx.conn(), &foo).unwrap().spec().unwrap();
    assert_eq!(after.resources.memory, Size(2 << 30));
    assert_eq!(after.cloud_init_hash, before.cloud_init_hash, "cloud-init is reported, never recorded as applied");
    let again = plan::plan(&ctx, &declared(file), plan::Options::default()).unwrap();
    let left: Vec<&str> = again.vms[0].changes().iter().map(|c| c.field()).collect();
    assert_eq!((again.changes, left), (0, vec!["cloud-init"]), "still reported, the rest converged");
}

#[test]
fn prune_destroys_only_project_vms_not_in_the_file_and_keeps_their_data() {
    let ctx = Arc::new(ctx());
    let pool = with_base_image(&ctx);
    define_owned(&ctx, &pool, "foo", Phase::Ready);
    define_owned(&ctx, &pool, "bar", Phase::Ready);
    define_foreign(&ctx, "project-hand");
    let p = plan::plan(&ctx, &declared(FOO_1G), plan::Options::default()).unwrap();
    let bar = p.vms.iter().find(|v| v.name.as_str() == "bar").unwrap();
    assert_eq!(bar.action(), Action::NotInFile);
    assert_eq!(p.changes, 0, "without --prune nothing is removed");

    let r = apply::apply(&Fleet::of(ctx.clone()), &declared(FOO_1G), opts(true), None).unwrap();
    assert_eq!((r.changes, r.failed), (1, 0), "{:?}", r.results);
    assert!(matches!(vms::lookup(&ctx.conn(), &name("bar")).unwrap(), vms::Lookup::Absent));
    assert!(volumes(&pool).contains(&"project-bar-data.qcow2".to_string()), "project disk kept");
    assert!(!volumes(&pool).contains(&"project-bar-root.qcow2".to_string()));
    assert!(ctx.conn().lookup_domain_by_name("project-hand").is_ok(), "foreign domain untouched");
    assert!(matches!(vms::lookup(&ctx.conn(), &name("foo")).unwrap(), vms::Lookup::Owned(_)));
}

#[test]
fn a_failed_create_skips_its_dependents_and_leaves_nothing() {
    let ctx = Arc::new(ctx());
    let pool = with_base_image(&ctx);
    let file = r#"{"defaults": {"memory": "1G", "disk": "5G", "project_disk": "1G"},
                   "vms": {"web": {}, "db": {"depends_on": ["web"]}, "solo": {}}}"#;
    let p = plan::plan(&ctx, &declared(file), plan::Options::default()).unwrap();
    assert!(p.vms.iter().all(|v| v.action() == Action::Create));
    // The test driver cannot upload the seed, so each create fails and rolls back.
    let r = apply::apply(&Fleet::of(ctx.clone()), &declared(file), opts(false), None).unwrap();
    let db = r.results.iter().find(|r| r.name == "db").unwrap();
    assert_eq!(db.error.as_deref(), Some("skipped: its dependency web failed"));
    assert!(r.results.iter().find(|r| r.name == "solo").unwrap().error.as_deref().unwrap().contains("seed"));
    assert_eq!(r.failed, 3);
    assert!(vms::list(&ctx.conn()).unwrap().is_empty());
    assert_eq!(volumes(&pool), vec!["base.qcow2"]);
}

#[test]
fn plan_checks_what_apply_will_need() {
    let ctx = ctx();
    let _pool = with_base_image(&ctx);
    // One VM's image is nowhere; another's disk is smaller than its image (1G).
    let file = r#"{"vms": {"lost": {"image": "nowhere"}, "tight": {"disk": "512M"}, "fine": {"disk": "5G"}}}"#;
    let err = plan::plan(&ctx, &declared(file), plan::Options::default()).unwrap_err();
    assert_eq!(exit_code(&err), 2);
    let msg = err.to_string();
    assert!(msg.contains("vms.lost: no image nowhere"), "{msg}");
    assert!(msg.contains("vms.tight: disk 512M is smaller than its image base.qcow2"), "{msg}");
    assert!(!msg.contains("vms.fine"), "{msg}");
    let err = apply::apply(&Fleet::of(Arc::new(ctx)), &declared(file), opts(false), None).unwrap_err();
    assert_eq!(exit_code(&err), 2);
}

#[test]
fn snapshots_list_delete_and_block_growing_disks() {
    let (ctx, pool, _foo, vm) = with_vm("foo", Phase::Ready);
    let s1 = ops::snapshot::create(&ctx, &vm, None, Some("first")).unwrap();
    assert_eq!((s1.name.as_str(), s1.memory), ("snap-1", false), "a stopped VM: disks only");
    assert_eq!(s1.disks, vec!["vda", "vdb"], "the seed CD-ROM is never part of one");
    let s2 = ops::snapshot::create(&ctx, &vm, None, None).unwrap();
    assert_eq!(s2.name, "snap-2");
    let e = ops::snapshot::create(&ctx, &vm, Some("snap-1"), None).unwrap_err();
    assert_eq!(exit_code(&e), 2);
    assert_eq!(exit_code(&ops::snapshot::create(&ctx, &vm, Some("bad name"), None).unwrap_err()), 2);
    let names: Vec<String> = ops::snapshot::list(&ctx, &vm).unwrap().0.into_iter().map(|s| s.name).collect();
    assert_eq!(names, vec!["snap-1", "snap-2"]);

    // Growing a disk of a VM with snapshots is refused in the plan, with the reason.
    let file = r#"{"vms": {"foo": {"memory": "1G", "cpus": 1, "disk": "5G", "project_disk": "3G"}}}"#;
    let p = plan::plan(&ctx, &declared(file), plan::Options::default()).unwrap();
    assert_eq!(p.impossible, 1, "{:?}", p.vms[0].changes());

    ops::snapshot::delete(&ctx, &vm, "snap-2").unwrap();
    assert_eq!(exit_code(&ops::snapshot::delete(&ctx, &vm, "snap-2").unwrap_err()), 3);
    // destroy leaves no snapshot metadata: a new domain of that name starts clean.
    ops::destroy::destroy(&ctx, &vm, false).unwrap();
    let foo = define_owned(&ctx, &pool, "foo", Phase::Ready);
    let vm = vms::get(&ctx.conn(), &foo).unwrap();
    assert!(ops::snapshot::list(&ctx, &vm).unwrap().0.is_empty());
}

#[test]
fn default_snapshot_names_go_on_after_the_largest_number() {
    let (ctx, _pool, _foo, vm) = with_vm("big", Phase::Ready);
    ops::snapshot::create(&ctx, &vm, Some("snap-18446744073709551615"), None).unwrap();
    // Nothing above u64::MAX: the lowest free number instead, every time.
    assert_eq!(ops::snapshot::create(&ctx, &vm, None, None).unwrap().name, "snap-1");
    assert_eq!(ops::snapshot::create(&ctx, &vm, None, None).unwrap().name, "snap-2");
}

#[test]
fn a_domain_whose_record_cannot_be_read_is_not_ours_and_never_touched() {
    let ctx = ctx();
    let pool = with_base_image(&ctx);
    // A hand-written record in our namespace without the version attribute.
    ctx.conn()
        .define_domain_xml(&format!(
            "<domain type='test'><name>project-hm</name><memory unit='MiB'>128</memory><os><type arch='x86_64'>hvm</type></os>\
             <metadata><projectvm:vm xmlns:projectvm='{}' name='hm' phase='ready' pool='pv' root='project-hm-root.qcow2' \
             data='project-hm-data.qcow2' created='1'>{{}}</projectvm:vm></metadata></domain>",
            project_vm::libvirt::metadata::NAMESPACE
        ))
        .unwrap();
    assert!(matches!(vms::lookup(&ctx.conn(), &name("hm")).unwrap(), vms::Lookup::Foreign(Some(_))));
    let err = vms::get(&ctx.conn(), &name("hm")).err().unwrap();
    assert_eq!(exit_code(&err), 2, "{err:#}");
    assert!(err.to_string().contains("not created by project-vm"), "{err}");
    let err = ops::create::create(&ctx, &request("hm"), &Progress::hidden()).unwrap_err();
    assert_eq!(exit_code(&err), 2, "{err:#}");
    assert!(err.to_string().contains("not created by project-vm"), "{err}");
    assert!(vms::list(&ctx.conn()).unwrap().is_empty(), "list shows only project-vm's VMs");
    let dom = ctx.conn().lookup_domain_by_name("project-hm").expect("still there");
    assert!(dom.xml_desc(0).unwrap().contains("project-hm-root.qcow2"), "its record was left as it was");
    assert_eq!(volumes(&pool), vec!["base.qcow2".to_string()]);
}
