//! The provisioning pipeline end to end on booted guests: a user feature
//! from a features directory, then an application script that starts a
//! small HTTP server, then a health check against it; a second VM whose
//! check fails. Two VMs, each booted once.
//!
//! Run by hand (the fixture takes the guest-boot lock itself):
//! `PROJECT_VM_TEST_IMAGE=$(ls /var/cache/project-vm/test-images/debian-bookworm-*.qcow2) cargo test --test pipeline -- --ignored`

mod common;

use std::path::Path;

use common::guest::Guest;
use serde_json::{json, Value};

/// The application script: serves /srv/web (a health page, and what the
/// feature left) on the guest's loopback, as a transient systemd unit.
const APPLICATION: &str = r#"#!/bin/sh
set -eu
mkdir -p /srv/web
echo ok >/srv/web/health
cp /var/lib/hello/ok /srv/web/feature
systemd-run --unit=pipeline-web python3 -m http.server 8080 --bind 127.0.0.1 --directory /srv/web
echo "application: web server started"
"#;

/// `python3 -c` fetching a URL on the guest's loopback (the image has no curl).
fn fetch(url: &str) -> String {
    format!("python3 -c 'import urllib.request,sys; sys.stdout.write(urllib.request.urlopen(\"{url}\", timeout=3).read().decode())'")
}

/// A declarative file of one VM at `path`, next to the application script
/// (`autostart`: `apply` starts it, and with `--wait` waits for it).
fn declare(path: &Path, vm: &str, entry: Value) {
    let file = json!({ "defaults": { "memory": "1G", "cpus": 2, "disk": "8G", "project_disk": "1G", "autostart": true }, "vms": { vm: entry } });
    std::fs::write(path, serde_json::to_string_pretty(&file).unwrap()).unwrap();
}

/// The `hello` feature from the features fixture directory (the feature
/// library's `feature_dirs`, in the test's settings).
fn hello_feature(env: &Guest) -> Value {
    let dirs = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/features");
    let mut settings = env.settings();
    settings["feature_dirs"] = json!([dirs]);
    std::fs::write(&env.config, settings.to_string()).unwrap();
    json!({ "features": ["hello"] })
}

/// The names of a VM's snapshots, oldest first.
fn snapshot_names(env: &Guest, vm: &str) -> Vec<String> {
    let list = env.run(&["snapshot", "list", vm, "--json"]).expect(0).json();
    list.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_owned()).collect()
}

/// The JSON stage events on stderr (`--json --progress`).
fn stages(stderr: &str) -> Vec<Value> {
    stderr.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|v| v["event"] == "stage").collect()
}

#[test]
#[ignore = "boots guests; needs root, libvirtd and PROJECT_VM_TEST_IMAGE; run by scripts/test.sh"]
fn a_feature_an_application_and_its_checks_provision_a_vm() {
    let env = Guest::new("pipeline", 22400, &["pipe-ok", "pipe-bad"]);
    env.import();
    std::fs::write(env.dir.join("app.sh"), APPLICATION).unwrap();
    let mut ok = hello_feature(&env);
    ok["application_script"] = json!("app.sh");
    ok["checks"] = json!([{ "name": "web", "command": fetch("http://127.0.0.1:8080/health"), "timeout": "5s", "retries": 10, "interval": "1s" }]);
    ok["stage_snapshots"] = json!(true);

    // 1. The first VM: apply --wait runs the feature, the application
    // script and the check, and shows each stage as an event.
    let ok_file = env.dir.join("ok.json");
    declare(&ok_file, "pipe-ok", ok);
    let applied =
        env.run(&["apply", "-f", ok_file.to_str().unwrap(), "--wait", "--timeout", "900", "--json", "--progress"]);
    let applied = applied.expect(0);
    let events = stages(&applied.stderr);
    let seen: Vec<&str> = events.iter().filter_map(|e| e["stage"].as_str()).collect();
    // (A feature's own stage shows only while its script runs: the fixture's is too quick to rely on.)
    for stage in ["booting", "features-done", "application", "application-done", "check"] {
        assert!(seen.contains(&stage), "no {stage} event in {seen:?}:\n{}", applied.stderr);
    }
    assert!(events.iter().any(|e| e["stage"] == "check" && e["detail"] == "web" && e["vm"] == "pipe-ok"), "{events:?}");

    // The stage snapshots: pre-configured once the feature was done,
    // final-form once the application script and the check passed.
    assert_eq!(snapshot_names(&env, "pipe-ok"), ["pre-configured", "final-form"]);

    // The server the application script started serves what the feature left.
    assert_eq!(env.ssh("pipe-ok", &fetch("http://127.0.0.1:8080/feature")), "hello from a feature\n");

    // `check` runs the checks again over ssh: a table, and JSON.
    let table = env.run(&["check", "pipe-ok"]).expect(0).stdout;
    assert!(table.starts_with("CHECK") && table.lines().nth(1).unwrap().starts_with("web "), "{table}");
    assert!(table.contains(" pass "), "{table}");
    let report = env.run(&["check", "pipe-ok", "--json"]).expect(0).json();
    assert_eq!((report["passed"].as_bool(), report["checks"][0]["name"].as_str()), (Some(true), Some("web")));
    // `status` shows the last results.
    let status = env.run(&["status", "pipe-ok", "--json"]).expect(0).json();
    assert_eq!(status["last_checks"]["checks"][0]["ok"], true, "{status}");

    // 2. The second VM: its check can never pass (nothing listens on 8081).
    let bad_file = env.dir.join("bad.json");
    // The same feature and application script; a check on a port nothing serves.
    let mut bad = hello_feature(&env);
    bad["application_script"] = json!("app.sh");
    bad["checks"] = json!([{ "name": "api", "command": fetch("http://127.0.0.1:8081/"), "timeout": "3s", "retries": 2, "interval": "1s" }]);
    bad["stage_snapshots"] = json!(true);
    declare(&bad_file, "pipe-bad", bad);
    // apply --wait: exit 9, the check named in the VM's result.
    let applied = env.run(&["apply", "-f", bad_file.to_str().unwrap(), "--wait", "--timeout", "900"]).expect(9);
    assert!(applied.stdout.contains("pipe-bad: 1 health check failed: api"), "{}", applied.stdout);
    // start --wait of the running VM reads the same report: exit 9 naming it.
    let failed = env.run(&["start", "pipe-bad", "--wait", "--timeout", "900"]).expect(9);
    assert!(failed.stderr.contains("pipe-bad: 1 health check failed: api"), "{}", failed.stderr);
    // The features were done, the check never passed: no final form.
    assert_eq!(snapshot_names(&env, "pipe-bad"), ["pre-configured"]);
    let again = env.run(&["check", "pipe-bad"]).expect(9);
    assert!(again.stdout.lines().any(|l| l.starts_with("api ") && l.contains(" fail ")), "{}", again.stdout);
    assert!(again.stderr.contains("failed: api"), "{}", again.stderr);
}
