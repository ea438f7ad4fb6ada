//! Every cloud-config project-vm generates passes cloud-init's own schema
//! validator, on each cloud-init the project supports (22.4 from bookworm and
//! 25.x from trixie: scripts/cloud-init-validators.sh fetches both from
//! Debian's archive). Each feature alone and all together, with a pinned host
//! key, Tailscale on, and a user's cloud-config merged in; network-config too.

use std::path::{Path, PathBuf};
use std::process::Command;

use project_vm::cloudinit::{self, hostkey::HostKey, SeedInput};
use project_vm::features;
use project_vm::spec::{Accel, Network, Resources, Size, StaticNetwork, VmName, VmSpec};
use serde_json::Value;

/// One seed to validate.
struct Case {
    what: String,
    feats: Vec<String>,
    user_data: Option<Value>,
    tailscale: bool,
    net: Option<StaticNetwork>,
}

fn validators() -> Vec<PathBuf> {
    let list = std::env::var("PROJECT_VM_CLOUD_INIT_VALIDATORS").expect(
        "PROJECT_VM_CLOUD_INIT_VALIDATORS is not set: run scripts/test.sh (scripts/cloud-init-validators.sh prints them)",
    );
    let v: Vec<PathBuf> = list.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect();
    assert!(v.len() >= 2, "want cloud-init 22.4 and 25.x validators, got {v:?}");
    v
}

fn spec(tailnet: Option<&str>, features: Vec<String>) -> VmSpec {
    VmSpec {
        name: VmName::parse("schema").unwrap(),
        resources: Resources { memory: Size(1 << 30), cpus: 2, disk: Size(8 << 30), project_disk: Size(2 << 30) },
        base_image: "debian-13".into(),
        accel: Accel::Kvm,
        network: Network::default(),
        ssh_user: "dev".into(),
        ssh_port: None,
        tailnet: tailnet.map(String::from),
        autostart: false,
        features,
        firmware: Default::default(),
        network_config: None,
        hostdevs: vec![],
        shares: vec![],
        ports: vec![],
        cloud_init_hash: String::new(),
        stage_snapshots: false,
        checks: vec![],
        application_script: false,
    }
}

/// Runs `validator schema -c FILE [extra]`: (exit code, everything it printed).
fn validate(validator: &Path, file: &Path, extra: &[&str]) -> (i32, String) {
    let out = Command::new(validator).arg("schema").arg("-c").arg(file).args(extra).output().expect("run validator");
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

fn version(validator: &Path) -> String {
    let out = Command::new(validator).arg("--version").output().expect("run validator");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)).trim().to_owned()
}

/// cloud-init 22.4 validates cloud-config only; network-config came later.
fn checks_network_config(validator: &Path) -> bool {
    let out = Command::new(validator).args(["schema", "--help"]).output().expect("run validator");
    String::from_utf8_lossy(&out.stdout).contains("--schema-type")
}

fn clean(code: i32, out: &str) -> bool {
    code == 0 && out.contains("Valid") && !["WARNING", "eprecat", "Error", "Invalid"].iter().any(|w| out.contains(w))
}

#[test]
#[ignore = "needs cloud-init validators (scripts/cloud-init-validators.sh); run by scripts/test.sh"]
fn every_generated_seed_passes_cloud_init_schema() {
    let dir = tempfile::tempdir().unwrap();
    let key = HostKey::generate("project-schema").unwrap();
    let keys =
        vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGbNlmZ4sGeLhPylGd4cGMMThc3OHc3ULrMhtkdPRXw6 me@host".to_string()];
    let user = cloudinit::parse_user_data(
        "#cloud-config\npackages: [htop]\nruncmd:\n  - [sh, -c, 'echo hello > /tmp/hello']\nwrite_files:\n  - path: /etc/motd\n    content: hi\n",
        "user.yaml",
    )
    .unwrap();
    let all: Vec<String> = features::names();
    let case = |what: &str, feats: Vec<String>, user_data: Option<&Value>, tailscale: bool| Case {
        what: what.to_owned(),
        feats,
        user_data: user_data.cloned(),
        tailscale,
        net: None,
    };
    let mut cases = vec![case("plain", vec![], None, false)];
    for f in &all {
        cases.push(case(&format!("feature {f}"), vec![f.clone()], None, false));
    }
    cases.push(case("all features", all.clone(), None, false));
    cases.push(case("tailscale", vec![], None, true));
    cases.push(case("user-data", vec![], Some(&user), false));
    cases.push(case("everything", all.clone(), Some(&user), true));
    for (what, net) in [
        ("static IPv4", r#"{"address":"10.0.0.5/24","gateway":"10.0.0.1","dns":["10.0.0.1","9.9.9.9"]}"#),
        ("static IPv6", r#"{"address":"fd00::5/64","gateway":"fd00::1"}"#),
        ("static, no gateway", r#"{"address":"192.168.50.7/24"}"#),
    ] {
        cases.push(Case { net: Some(serde_json::from_str(net).unwrap()), ..case(what, vec![], None, false) });
    }

    let mut failures = Vec::new();
    let mut checked = 0;
    let mut network_checked = 0;
    for (i, Case { what, feats, user_data, tailscale, net }) in cases.iter().enumerate() {
        let mut s = spec(tailscale.then_some("example.ts.net"), feats.clone());
        s.network_config = net.clone();
        let extra = features::user_config(feats, user_data.as_ref()).unwrap();
        let seed = cloudinit::render(&SeedInput {
            spec: &s,
            authorized_keys: &keys,
            host_key: Some(&key),
            user_data: extra.as_ref(),
            instance_id: "project-schema-1",
            tailscale_auth_key: tailscale.then_some("tskey-auth-test"),
        });
        let ud = dir.path().join(format!("user-data-{i}"));
        let nc = dir.path().join(format!("network-config-{i}"));
        std::fs::write(&ud, &seed.user_data).unwrap();
        std::fs::write(&nc, &seed.network_config).unwrap();
        for v in validators() {
            let ver = version(&v);
            let (code, out) = validate(&v, &ud, &[]);
            if !clean(code, &out) {
                failures.push(format!("{what} user-data on cloud-init {ver} (exit {code}):\n{out}"));
            }
            checked += 1;
            if checks_network_config(&v) {
                let (code, out) = validate(&v, &nc, &["--schema-type", "network-config"]);
                if !clean(code, &out) {
                    failures.push(format!("{what} network-config on cloud-init {ver} (exit {code}):\n{out}"));
                }
                checked += 1;
                network_checked += 1;
            }
        }
    }
    // reconfigure's seed: no host key in it, the guest's kept (ssh_deletekeys false, one key type).
    let extra = features::user_config(&all, Some(&user)).unwrap();
    let s = spec(None, all.clone());
    let input = SeedInput {
        spec: &s,
        authorized_keys: &keys,
        host_key: None,
        user_data: extra.as_ref(),
        instance_id: "project-schema-1-r2",
        tailscale_auth_key: None,
    };
    let ud = dir.path().join("user-data-reconfigure");
    std::fs::write(&ud, cloudinit::render_with(&input, cloudinit::keep_host_key).user_data).unwrap();
    for v in validators() {
        let (code, out) = validate(&v, &ud, &[]);
        if !clean(code, &out) {
            failures.push(format!("reconfigure user-data on cloud-init {} (exit {code}):\n{out}", version(&v)));
        }
        checked += 1;
    }
    assert!(failures.is_empty(), "{} of {checked} checks failed:\n{}", failures.len(), failures.join("\n"));
    assert!(network_checked > 0, "no validator could check network-config");
    eprintln!("{checked} validator runs, all clean ({network_checked} of network-config)");
}

#[test]
#[ignore = "needs cloud-init validators (scripts/cloud-init-validators.sh); run by scripts/test.sh"]
fn the_validators_catch_what_broke_cloud_init_25() {
    // The keys our seed used to carry at the top level. cloud-init 25 rejects
    // both (that made every VM "degraded"); 22.4 only logged the first, but
    // rejects the second. Each validator must object to what it objects to
    // in a guest, or the test above proves nothing.
    let dir = tempfile::tempdir().unwrap();
    let write = |i: usize, text: &str| {
        let f = dir.path().join(format!("bad-{i}"));
        std::fs::write(&f, text).unwrap();
        f
    };
    let cache_clean = write(0, "#cloud-config\nmanual_cache_clean: true\n");
    let no_keytypes = write(1, "#cloud-config\nssh_genkeytypes: []\n");
    for v in validators() {
        let ver = version(&v);
        let (code, out) = validate(&v, &no_keytypes, &[]);
        assert!(!clean(code, &out), "cloud-init {ver} accepted an empty ssh_genkeytypes: {out}");
        if ver.contains(" 25.") {
            let (code, out) = validate(&v, &cache_clean, &[]);
            assert!(!clean(code, &out), "cloud-init {ver} accepted manual_cache_clean as user-data: {out}");
        }
    }
    assert!(validators().iter().any(|v| version(v).contains(" 25.")), "no cloud-init 25 validator");
}
