//! End to end on a booted guest: stage snapshots and `reconfigure`. One VM,
//! three boots (its first, the reconfigure's, the sealing boot of `image
//! save`). Needs root, libvirtd and PROJECT_VM_TEST_IMAGE; run by
//! scripts/test.sh (the Guest fixture takes the guest-boot lock itself).

mod common;

use common::*;

/// An application script that serves `page` over HTTP on the guest's
/// loopback port 8080 (python3's http.server as a transient systemd unit).
fn web_script(env: &Env, file: &str, page: &str) -> String {
    let text = format!(
        "#!/bin/sh\nset -eu\nmkdir -p /srv/www\necho '{page}' >/srv/www/index.html\nsystemd-run --unit=web python3 -m http.server 8080 --bind 127.0.0.1 --directory /srv/www\n"
    );
    let path = env.dir.join(file);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// The page the guest serves, fetched in the guest (retried while the server starts).
fn page(env: &Env, name: &str) -> String {
    env.ssh(
        name,
        "for i in $(seq 50); do python3 -c 'import urllib.request; print(urllib.request.urlopen(\"http://127.0.0.1:8080/\").read().decode().strip())' 2>/dev/null && exit 0; sleep 0.2; done; exit 1",
    )
    .trim()
    .to_owned()
}

fn snapshots(env: &Env, name: &str) -> Vec<serde_json::Value> {
    env.run(&["snapshot", "list", name, "--json"]).ok().json().as_array().unwrap().clone()
}

#[test]
#[ignore = "boots guests; needs root, libvirtd and PROJECT_VM_TEST_IMAGE; run by scripts/test.sh"]
fn stage_snapshots_then_reconfigure_keeps_the_vm_itself() {
    let env = Guest::new("stages", 22850, &["st"]);
    env.import();
    let v1 = web_script(&env, "v1.sh", "version one");
    let args =
        ["create", "st", "1G", "1", "8G", "--project-disk", "1G", "--application-script", &v1, "--stage-snapshots"];
    let created = env.run(&[&args[..], &["--wait", "--timeout", "900", "--json"]].concat()).ok().json();
    assert_eq!(created["ready"]["result"], "done", "{created}");
    assert_eq!(created["ready"]["application"]["exit"], 0, "{created}");
    assert_eq!(created["stage_snapshots"], serde_json::json!(["pre-configured", "final-form"]), "{created}");
    eprintln!(
        "TIMING create --wait with stage snapshots: {:.1} s to ready",
        created["ready"]["waited_s"].as_f64().unwrap()
    );

    // Both stage snapshots: of the running guest (memory too), both disks, no seed.
    let list = snapshots(&env, "st");
    let names: Vec<&str> = list.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["pre-configured", "final-form"], "{list:?}");
    for s in &list {
        assert_eq!((s["state"].as_str(), s["memory"].as_bool()), (Some("running"), Some(true)), "{s}");
        assert_eq!(s["disks"], serde_json::json!(["vda", "vdb"]), "{s}");
    }
    assert!(!env.volumes().contains(&"project-st-seed.iso".to_string()), "{:?}", env.volumes());
    // Their names are the stages' alone.
    assert_eq!(env.run(&["snapshot", "create", "st", "final-form"]).code, 2);

    assert_eq!(page(&env, "st"), "version one");
    env.ssh("st", "echo kept | sudo tee /project/data >/dev/null && sync");
    let machine_id = env.ssh("st", "cat /etc/machine-id");
    let host_key = env.ssh("st", "sudo -n cat /etc/ssh/ssh_host_ed25519_key.pub");
    let key_files = env.ssh("st", "ls /etc/ssh/ | grep '^ssh_host_'");

    // reconfigure with a changed application script: provisioned again, the same machine.
    let v2 = web_script(&env, "v2.sh", "version two");
    let r = env.run(&["reconfigure", "st", "--application-script", &v2, "--timeout", "900", "--json"]).ok().json();
    assert_eq!((r["ready"]["result"].as_str(), r["ready"]["cloud_init"].as_str()), (Some("done"), Some("ran")), "{r}");
    // The provisioning boot of a new instance, reported as --wait reports one.
    assert_eq!(r["ready"]["boot"], "first", "{r}");
    assert_eq!(r["ready"]["application"]["exit"], 0, "{r}");
    // (ssh verifies the pinned host key: it still works, and the key is the same.)
    assert_eq!(page(&env, "st"), "version two");
    assert_eq!(env.ssh("st", "sudo -n cat /etc/ssh/ssh_host_ed25519_key.pub"), host_key);
    assert_eq!(env.ssh("st", "ls /etc/ssh/ | grep '^ssh_host_'"), key_files, "no host key deleted or made");
    assert_eq!(env.ssh("st", "cat /etc/machine-id"), machine_id);
    assert_eq!(env.ssh("st", "cat /project/data").trim(), "kept");
    assert_eq!(env.ssh("st", "cat /var/lib/cloud/data/instance-id").trim(), r["instance_id"].as_str().unwrap());
    assert!(!env.volumes().contains(&"project-st-seed.iso".to_string()), "{:?}", env.volumes());
    // No stage snapshot taken again.
    assert_eq!(snapshots(&env, "st").len(), 2);

    // A revert to final-form resumes the guest as it was then: version one.
    let rev = env.run(&["snapshot", "revert", "st", "final-form", "--json"]).ok().json();
    assert_eq!(rev["state"], "running", "{rev}");
    env.ssh_once_answering("st", "true", std::time::Duration::from_secs(300));
    assert_eq!(page(&env, "st"), "version one");

    // image save from the reverted state: a template of the final form.
    env.run(&["stop", "st", "--timeout", "120"]).ok();
    let saved = env.run(&["image", "save", "st", "st-final", "--json"]).ok().json();
    assert_eq!(saved["parent"], "debian", "{saved}");

    env.run(&["destroy", "st"]).ok();
    env.run(&["image", "rm", "st-final"]).ok();
    assert_eq!(env.vm_volumes(), Vec::<String>::new());
}
