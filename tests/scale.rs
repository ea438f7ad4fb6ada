//! Per-VM cost cannot silently grow back: the libvirt calls (remote procedure
//! calls, counted from libvirt's own client log) that `list`, a re-`apply`,
//! `create` and an `apply` of new VMs make, at two host sizes. Only the
//! difference between the sizes is asserted, so VMs that others keep on the
//! host add the same to both counts. No timings are asserted: the benchmark
//! (scripts/bench.sh) measures those.

mod common;

use common::*;

/// A declarative file with VMs `prefix0..prefixN`.
fn file(env: &Env, tag: &str, names: impl Iterator<Item = String>) -> String {
    let vms: serde_json::Map<String, serde_json::Value> = names.map(|n| (n, serde_json::json!({}))).collect();
    let doc = serde_json::json!({
        "defaults": {"memory": "256M", "cpus": 1, "disk": "2G", "project_disk": "1G"},
        "vms": vms,
    });
    let path = env.dir.join(format!("{tag}.json"));
    std::fs::write(&path, doc.to_string()).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Runs project-vm with libvirt's client logging its RPCs; returns the run
/// and how many calls it sent.
fn counted(env: &Env, args: &[&str]) -> (Run, usize) {
    let log = env.dir.join("rpc.log");
    let _ = std::fs::remove_file(&log);
    let t0 = std::time::Instant::now();
    let out = env
        .cmd(args)
        .env("LIBVIRT_LOG_OUTPUTS", format!("1:file:{}", log.display()))
        .env("LIBVIRT_LOG_FILTERS", "1:rpc")
        .output()
        .unwrap();
    let run = Run::of(&out, t0.elapsed().as_millis());
    let calls = std::fs::read_to_string(&log).unwrap_or_default().matches("RPC_CLIENT_MSG_TX_QUEUE").count();
    assert!(calls > 0, "no RPCs logged: is libvirt's client logging working?\n{}", run.stderr);
    eprintln!("$ project-vm {}: {calls} libvirt calls", args.join(" "));
    (run.ok(), calls)
}

struct Costs {
    list: usize,
    reapply: usize,
    create: usize,
    apply_new: usize,
}

/// Brings the pool to `n` VMs (`vm0..`), then counts each operation.
fn costs(env: &Env, n: usize, round: usize) -> Costs {
    let base = file(env, &format!("base{n}"), (0..n).map(|i| format!("vm{i}")));
    env.run(&["apply", "-f", &base, "--json"]).ok();
    let (r, list) = counted(env, &["list", "--json"]);
    assert_eq!(r.json().as_array().unwrap().len(), n);
    let (r, reapply) = counted(env, &["apply", "-f", &base, "--json"]);
    assert_eq!(r.json()["changes"], 0, "an unchanged file changes nothing");
    let one = format!("one{round}");
    let (_, create) = counted(env, &["create", &one, "256M", "1", "2G", "--project-disk", "1G", "--json"]);
    env.run(&["destroy", &one]).ok();
    // Five new VMs beside the n: the same work whatever n is, but one survey.
    let more = file(
        env,
        &format!("more{n}"),
        (0..n).map(|i| format!("vm{i}")).chain((0..5).map(|i| format!("new{round}x{i}"))),
    );
    let (r, apply_new) = counted(env, &["apply", "-f", &more, "--json", "-j", "1"]);
    assert_eq!(r.json()["failed"], 0);
    env.run(&["apply", "-f", &base, "--prune", "--delete-data", "--json"]).ok();
    Costs { list, reapply, create, apply_new }
}

#[test]
#[ignore = "needs root and libvirtd on qemu:///system; run by scripts/test.sh"]
fn libvirt_calls_per_vm_stay_flat() {
    require_root_libvirt();
    let env = Env::new("scale", 22900, serde_json::json!({"base_image": "tiny"}));
    // apply --prune of an empty file removes exactly this pool's VMs.
    let mut guard = Cleanup::of(&env, &[]);
    guard.prune(&env);
    let image = tiny_image(&env.dir);
    env.run(&["image", "import", image.to_str().unwrap(), "--name", "tiny"]).ok();

    let (small, large) = (4, 24);
    let a = costs(&env, small, 0);
    let b = costs(&env, large, 1);
    let added = large - small;
    let per_vm = |what: &str, x: usize, y: usize, allowed: usize| {
        let grew = y.saturating_sub(x);
        eprintln!("{what}: {x} calls at {small} VMs, {y} at {large} ({grew} more for {added} more VMs)");
        assert!(
            grew <= allowed * added + 2,
            "{what} makes {grew} more libvirt calls for {added} more VMs: at most {allowed} a VM was allowed \
             (bulk calls for state, CPUs, memory, autostart and volume sizes; one per VM for its record)"
        );
    };
    // One call per VM (its project-vm record); everything else in bulk.
    per_vm("list", a.list, b.list, 1);
    per_vm("re-apply", a.reapply, b.reapply, 1);
    // create reads every record once, for the ports in use.
    per_vm("create", a.create, b.create, 1);
    // Five creates, yet the records are read once for the plan and once for ports.
    per_vm("apply of 5 new VMs", a.apply_new, b.apply_new, 2);

    // list's disk usage, read from the pool's files, is what libvirt reports.
    let base = file(&env, "check", (0..3).map(|i| format!("vm{i}")));
    env.run(&["apply", "-f", &base]).ok();
    let listed = env.run(&["list", "--json"]).ok().json();
    for vm in listed.as_array().unwrap() {
        let name = vm["name"].as_str().unwrap();
        let alloc: u64 = ["root.qcow2", "data.qcow2"]
            .iter()
            .map(|v| {
                let out = virsh(&["vol-info", "--bytes", "--pool", &env.pool, &format!("project-{name}-{v}")]);
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let line = text.lines().find(|l| l.starts_with("Allocation:")).expect("allocation line");
                line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap()
            })
            .sum();
        assert_eq!(vm["disk_usage"], alloc, "{name}: list's disk usage differs from libvirt's");
        assert_eq!(vm["memory"], 256u64 << 20);
        assert_eq!(vm["vcpus"], 1);
        assert_eq!(vm["state"], "shutoff");
    }
}
