//! The cloud-init NoCloud seed: `user-data`, `meta-data` and `network-config`,
//! rendered from a [`VmSpec`], written into an ISO (volume id `cidata`).
//!
//! The cloud-config is built as a JSON value (JSON is YAML, and cloud-init
//! reads it as such), so nothing here escapes YAML by hand. A user's own
//! cloud-config (`--user-data`) is parsed here and merged in, so a YAML error
//! is reported at `create`, not discovered inside the guest.

pub mod hostkey;
pub mod iso;

use serde_json::{json, Map, Value};

use crate::config::error::ConfigError;
use crate::libvirt::domain_xml::{DATA_DISK_SERIAL, READY_CHANNEL};
use crate::spec::VmSpec;

/// The guest-side readiness reporter: after cloud-init's final stage it writes
/// `cloud-init status --format json` to the virtio-serial port the host reads.
const READY_SCRIPT: &str = include_str!("../../cloud-init/project-vm-ready");
const READY_UNIT: &str = include_str!("../../cloud-init/project-vm-ready.service");
/// The health-check runner (see `crate::health`).
const CHECKS_SCRIPT: &str = include_str!("../../cloud-init/project-vm-checks");
/// Formats the project disk when (and only when) it is blank.
const FORMAT_SCRIPT: &str = include_str!("../../cloud-init/project-disk-format.sh");

/// cloud-init system configuration installed in the guest on first boot.
pub const SYSTEM_CFG_PATH: &str = "/etc/cloud/cloud.cfg.d/90-project-vm.cfg";
const SYSTEM_CFG: &str =
    "# Written by project-vm: trust the cached instance once the seed is removed.\nmanual_cache_clean: true\n";

/// First boot, final stage: the manual-clean marker, then the reporter.
const MANUAL_CLEAN_AND_REPORTER: &str = "touch /var/lib/cloud/instance/manual-clean && systemctl daemon-reload && systemctl enable project-vm-ready.service && systemctl start --no-block project-vm-ready.service";

pub const PROJECT_MOUNT: &str = "/project";
/// Where the Tailscale auth key waits in the guest (root only, removed once used).
const TS_AUTHKEY_PATH: &str = "/run/project-vm/ts-authkey";
pub const PROJECT_LABEL: &str = "project";

/// What goes into the seed besides the spec.
pub struct SeedInput<'a> {
    pub spec: &'a VmSpec,
    pub authorized_keys: &'a [String],
    pub host_key: Option<&'a hostkey::HostKey>,
    /// The user's cloud-config, already parsed.
    pub user_data: Option<&'a Value>,
    pub instance_id: &'a str,
    pub tailscale_auth_key: Option<&'a str>,
}

/// What runs after the features on the first boot.
#[derive(Debug, Clone, Copy, Default)]
pub struct Provisioning<'a> {
    pub application_script: Option<&'a str>,
    pub checks: &'a [crate::health::Check],
}

/// Where the guest keeps the features' scripts (`crate::features`), which
/// the readiness reporter names in its progress.
pub const FEATURE_SCRIPT_DIR: &str = "/usr/local/libexec/project-vm/features";

/// The three files of a NoCloud seed.
#[derive(Debug, Clone)]
pub struct Seed {
    pub user_data: String,
    pub meta_data: String,
    pub network_config: String,
}

pub use crate::spec::{fingerprint, Fingerprint};

/// Parses a user's cloud-config file (YAML starting with `#cloud-config`).
pub fn parse_user_data(text: &str, origin: &str) -> anyhow::Result<Value> {
    let first = text.lines().next().unwrap_or("").trim_end();
    if first != "#cloud-config" {
        return Err(ConfigError::invalid(format!(
            "{origin}: user-data must be a cloud-config whose first line is \"#cloud-config\" (its first line is not; the file's contents are not shown)"
        )));
    }
    let value: Value =
        serde_yaml_ng::from_str(text).map_err(|e| ConfigError::invalid(format!("{origin}: not valid YAML: {e}")))?;
    let value = match value {
        Value::Object(_) => value,
        Value::Null => Value::Object(Map::new()),
        _ => return Err(ConfigError::invalid(format!("{origin}: a cloud-config must be a mapping of module keys"))),
    };
    guard(&value, origin)?;
    Ok(value)
}

/// Keys of a user's cloud-config that would take away what project-vm
/// itself needs in the guest, and why each is refused.
const OWN_KEYS: &[(&str, &str)] = &[
    (
        "ssh_keys",
        "project-vm sets the guest's host key itself and pins it, so ssh verifies the guest from its first connection",
    ),
    ("ssh_deletekeys", "project-vm's pinned host key depends on it"),
    ("ssh_genkeytypes", "the guest keeps the one host key project-vm pinned"),
    (
        "cloud_init_modules",
        "project-vm's own setup (users, host key, mounts, its readiness reporter) runs in cloud-init's module lists",
    ),
    (
        "cloud_config_modules",
        "project-vm's own setup (users, host key, mounts, its readiness reporter) runs in cloud-init's module lists",
    ),
    (
        "cloud_final_modules",
        "project-vm's own setup (users, host key, mounts, its readiness reporter) runs in cloud-init's module lists",
    ),
];

/// Files project-vm writes in the guest; a user's `write_files` entry for
/// one of them would replace it.
fn own_files() -> [&'static str; 7] {
    [
        "/usr/local/libexec/project-vm-ready",
        crate::health::APPLICATION_PATH,
        crate::health::RUNNER_PATH,
        crate::health::DEFINITIONS_PATH,
        "/etc/systemd/system/project-vm-ready.service",
        SYSTEM_CFG_PATH,
        TS_AUTHKEY_PATH,
    ]
}

/// Refuses (exit 2, naming the key) a user's cloud-config that would take away
/// what project-vm needs: its pinned host key, its module lists, its files
/// (the readiness reporter, cloud-init's system configuration), and the
/// project disk's mount. Everything else merges, the user's value winning.
pub fn guard(user: &Value, origin: &str) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for (key, why) in OWN_KEYS {
        if user.get(*key).is_some() {
            problems.push(format!("{key}: not allowed: {why}"));
        }
    }
    for (i, f) in user.get("write_files").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let path = f.get("path").and_then(Value::as_str).unwrap_or_default();
        let clean = std::path::Path::new(path).components().collect::<std::path::PathBuf>();
        if own_files().iter().any(|own| clean == std::path::Path::new(own)) {
            problems.push(format!(
                "write_files[{i}].path: {path} is project-vm's own file in the guest; write another path"
            ));
        }
    }
    for (i, m) in user.get("mounts").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let field = |n: usize| m.get(n).and_then(Value::as_str).unwrap_or_default().trim_end_matches('/').to_owned();
        let (source, target) = (field(0), field(1));
        if target == PROJECT_MOUNT || source == format!("LABEL={PROJECT_LABEL}") || source.ends_with(DATA_DISK_SERIAL) {
            problems.push(format!(
                "mounts[{i}]: the project disk is mounted at {PROJECT_MOUNT} by project-vm; mount other things elsewhere"
            ));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(ConfigError::UnsafeCloudConfig { origin: origin.to_owned(), keys: problems }.into())
}

/// Merges `extra` into `base`: mappings recursively, lists appended, other
/// values replaced (the user's value wins). This is cloud-init's own
/// `list(append)+dict(recurse_array)` behaviour, done before the guest sees it.
pub fn merge(base: &mut Value, extra: &Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                match b.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(e)) => b.extend(e.iter().cloned()),
        (b, e) => *b = e.clone(),
    }
}

/// The cloud-config project-vm generates for every VM.
pub fn base_config(input: &SeedInput) -> Value {
    let spec = input.spec;
    let user = &spec.ssh_user;
    let hostname = spec.name.domain();
    let mut cfg = json!({
        "hostname": hostname,
        "preserve_hostname": false,
        "manage_etc_hosts": true,
        "users": [{
            "name": user,
            "shell": "/bin/bash",
            "lock_passwd": true,
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "ssh_authorized_keys": input.authorized_keys,
        }],
        "disable_root": true,
        "ssh_pwauth": false,
        "growpart": { "mode": "auto", "devices": ["/"] },
        "resize_rootfs": true,
        // The project disk: formatted only when blank, so a disk reattached
        // after `destroy --keep-data` keeps its data (see the script).
        "bootcmd": [["sh", "-c", FORMAT_SCRIPT
            .replace("@DEVICE@", &format!("/dev/disk/by-id/virtio-{DATA_DISK_SERIAL}"))
            .replace("@LABEL@", PROJECT_LABEL)]],
        "mounts": mounts(spec),
        "runcmd": [
            // The instance's manual-clean marker: what cloud-init itself writes
            // for `manual_cache_clean`, had that been in its configuration
            // before this boot read it. With it, ds-identify keeps cloud-init
            // enabled on later boots once the seed is gone (else it finds no
            // datasource and disables cloud-init for the boot), so per-boot
            // modules (growpart after a disk grows) still run from the cache.
            // Then the readiness reporter: after this (final) stage, and on
            // every later boot, whether or not cloud-init runs on it.
            ["sh", "-c", MANUAL_CLEAN_AND_REPORTER],
            ["chown", format!("{user}:{user}"), PROJECT_MOUNT],
        ],
        "write_files": own_write_files(),
    });
    if let Some(key) = input.host_key {
        pin_host_key(&mut cfg, key);
    }
    if let Some(auth_key) = input.tailscale_auth_key {
        join_tailnet(&mut cfg, auth_key, &hostname);
    }
    cfg
}

/// The project disk by its label, and the shares by their virtiofs tags.
fn mounts(spec: &VmSpec) -> Vec<Value> {
    // x-systemd.growfs: after `apply` grows the disk, the filesystem
    // follows at the next boot (mount(8) ignores the option on first boot).
    std::iter::once(json!([
        format!("LABEL={PROJECT_LABEL}"),
        PROJECT_MOUNT,
        "ext4",
        "defaults,nofail,x-systemd.growfs",
        "0",
        "2"
    ]))
    // Read-only shares mounted ro (virtiofs has no host-side read-only in libvirt).
    .chain(spec.shares.iter().map(|s| {
        let options = if s.readonly { "defaults,nofail,ro" } else { "defaults,nofail" };
        json!([s.tag(), s.target.display().to_string(), "virtiofs", options, "0", "0"])
    }))
    .collect()
}

/// The files project-vm writes in every guest: the readiness reporter,
/// its unit, and cloud-init's system configuration.
fn own_write_files() -> Value {
    json!([
        { "path": "/usr/local/libexec/project-vm-ready", "permissions": "0755", "content": READY_SCRIPT
            .replace("@READY_CHANNEL@", READY_CHANNEL)
            .replace("@FEATURE_SCRIPTS@", FEATURE_SCRIPT_DIR) },
        { "path": "/etc/systemd/system/project-vm-ready.service", "permissions": "0644", "content": READY_UNIT },
        // System configuration, not a user-data key (cloud-init's schema
        // rejects it there): once the seed is deleted (it holds secrets),
        // later boots trust the cached instance instead of looking for a
        // new one, so per-instance modules (host keys, users) never re-run.
        { "path": SYSTEM_CFG_PATH, "permissions": "0644", "content": SYSTEM_CFG },
    ])
}

/// Pinned host key: generated on the host at create, so `ssh` can verify
/// the guest from its first connection instead of trusting on first use.
/// With `ssh_keys` given, cloud-init generates no other keys (an empty
/// `ssh_genkeytypes` would fail its schema: the list needs an entry).
fn pin_host_key(cfg: &mut Value, key: &hostkey::HostKey) {
    cfg["ssh_deletekeys"] = json!(true);
    cfg["ssh_keys"] = json!({
        "ed25519_private": key.private_openssh,
        "ed25519_public": key.public_openssh,
    });
}

/// Joins the tailnet as project-NAME. The key file is only read at create
/// time, travels in the seed (root-only, deleted after first boot), and is
/// never logged or written into domain XML or metadata.
fn join_tailnet(cfg: &mut Value, auth_key: &str, hostname: &str) {
    let join = format!(
        "curl -fsSL https://tailscale.com/install.sh | sh && tailscale up --auth-key=\"$(cat /run/project-vm/ts-authkey)\" --hostname={hostname} --ssh=false && rm -f /run/project-vm/ts-authkey"
    );
    cfg["write_files"].as_array_mut().unwrap().push(json!({
        "path": TS_AUTHKEY_PATH, "permissions": "0600", "content": auth_key,
    }));
    cfg["runcmd"].as_array_mut().unwrap().push(json!(["sh", "-c", join]));
}

/// Renders the seed files.
pub fn render(input: &SeedInput) -> Seed {
    render_with(input, |_| {})
}

/// A guest that keeps the ssh host key it has (`reconfigure`, whose seed
/// carries no key: the private one never left the first seed): none deleted,
/// none generated beside the pinned ed25519 one.
pub fn keep_host_key(cfg: &mut Value) {
    cfg["ssh_deletekeys"] = json!(false);
    cfg["ssh_genkeytypes"] = json!(["ed25519"]);
}

/// [`render`], with `edit` applied to project-vm's own cloud-config before
/// the user's is merged in.
pub fn render_with(input: &SeedInput, edit: impl FnOnce(&mut Value)) -> Seed {
    render_seed(input, &Provisioning::default(), edit)
}

/// The files of the application script and the checks: the runner always
/// (so `check` works once checks are added), the script and the first
/// boot's definitions when there are any. Run by the readiness reporter
/// after cloud-init's final stage.
fn provisioning_files(prov: &Provisioning) -> Vec<Value> {
    let mut files =
        vec![json!({ "path": crate::health::RUNNER_PATH, "permissions": "0755", "content": CHECKS_SCRIPT })];
    if let Some(script) = prov.application_script {
        files.push(json!({ "path": crate::health::APPLICATION_PATH, "permissions": "0700", "content": script }));
    }
    if !prov.checks.is_empty() {
        let defs = crate::health::definitions(prov.checks);
        files.push(json!({ "path": crate::health::DEFINITIONS_PATH, "permissions": "0600", "content": defs }));
    }
    files
}

/// [`render`], with an application script and checks.
pub fn render_provisioned(input: &SeedInput, prov: &Provisioning) -> Seed {
    render_seed(input, prov, |_| {})
}

/// The seed: project-vm's own cloud-config (with `edit` applied), the
/// application script's and checks' files, then the user's cloud-config
/// merged in.
pub fn render_seed(input: &SeedInput, prov: &Provisioning, edit: impl FnOnce(&mut Value)) -> Seed {
    let mut cfg = base_config(input);
    edit(&mut cfg);
    cfg["write_files"].as_array_mut().expect("write_files").extend(provisioning_files(prov));
    if let Some(user) = input.user_data {
        merge(&mut cfg, user);
    }
    let user_data = format!(
        "#cloud-config\n# generated by project-vm for {}\n{}\n",
        input.spec.name.domain(),
        serde_json::to_string_pretty(&cfg).expect("json")
    );
    let meta_data = serde_json::to_string_pretty(&json!({
        "instance-id": input.instance_id,
        "local-hostname": input.spec.name.domain(),
    }))
    .expect("json");
    let network_config = serde_json::to_string_pretty(&network_config(input.spec)).expect("json");
    Seed { user_data, meta_data, network_config }
}

/// network-config v2 for the one NIC, matched by the MAC project-vm gave it
/// (whatever the guest names it): DHCP, or the spec's fixed address.
pub fn network_config(spec: &VmSpec) -> Value {
    let mut nic = json!({
        "match": { "macaddress": spec.name.mac() },
        "set-name": "eth0",
    });
    match &spec.network_config {
        None => nic["dhcp4"] = json!(true),
        Some(net) => {
            nic["dhcp4"] = json!(false);
            nic["dhcp6"] = json!(false);
            nic["addresses"] = json!([net.address.to_string()]);
            if let Some(gw) = net.gateway {
                let default = if gw.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
                nic["routes"] = json!([{ "to": default, "via": gw.to_string() }]);
            }
            if !net.dns.is_empty() {
                nic["nameservers"] = json!({ "addresses": net.dns.iter().map(|d| d.to_string()).collect::<Vec<_>>() });
            }
        }
    }
    json!({ "version": 2, "ethernets": { "primary": nic } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::domain_xml::tests::spec;
    use crate::spec::{Accel, Network};

    fn yaml(text: &str) -> Value {
        serde_yaml_ng::from_str(text).unwrap()
    }

    #[test]
    fn user_data_is_cloud_config_yaml() {
        let s = spec(Network::default(), Accel::Kvm);
        let keys = vec!["ssh-ed25519 AAAAC3 me@host".to_string()];
        let seed = render(&SeedInput {
            spec: &s,
            authorized_keys: &keys,
            host_key: None,
            user_data: None,
            instance_id: "iid-1",
            tailscale_auth_key: None,
        });
        assert!(seed.user_data.starts_with("#cloud-config\n"));
        let v = yaml(&seed.user_data);
        assert_eq!(v["hostname"], "project-foo");
        assert_eq!(v["users"][0]["name"], "dev");
        assert_eq!(v["users"][0]["sudo"], "ALL=(ALL) NOPASSWD:ALL");
        assert_eq!(v["users"][0]["ssh_authorized_keys"][0], keys[0]);
        assert!(v.get("fs_setup").is_none(), "cloud-init's fs_setup reformats whole disks");
        let format = v["bootcmd"][0][2].as_str().unwrap();
        assert!(format.contains("blkid -p \"$dev\""), "{format}");
        assert!(format.contains("2) mkfs.ext4 -q -L project \"$dev\""), "{format}");
        assert!(format.contains("dev=/dev/disk/by-id/virtio-project-data"), "{format}");
        assert_eq!(v["mounts"][0][1], "/project");
        assert!(v.get("ssh_keys").is_none());
        let m = yaml(&seed.meta_data);
        assert_eq!(m["instance-id"], "iid-1");
        assert_eq!(m["local-hostname"], "project-foo");
        let n = yaml(&seed.network_config);
        assert_eq!(n["ethernets"]["primary"]["match"]["macaddress"], s.name.mac());
    }

    #[test]
    fn merges_user_config() {
        let s = spec(Network::default(), Accel::Kvm);
        let user = parse_user_data("#cloud-config\npackages: [git]\nruncmd:\n  - echo hi\nhostname: other\n", "u.yaml")
            .unwrap();
        let seed = render(&SeedInput {
            spec: &s,
            authorized_keys: &[],
            host_key: None,
            user_data: Some(&user),
            instance_id: "i",
            tailscale_auth_key: None,
        });
        let v = yaml(&seed.user_data);
        assert_eq!(v["packages"][0], "git");
        let runcmd = v["runcmd"].as_array().unwrap();
        assert_eq!(runcmd.len(), 3, "ours then the user's: {runcmd:?}");
        assert_eq!(runcmd[2], "echo hi");
        assert_eq!(v["hostname"], "other", "user's scalar wins");
    }

    #[test]
    fn rejects_bad_user_data() {
        let e = parse_user_data("#!/bin/sh\necho\n", "u.sh").unwrap_err();
        assert_eq!(crate::exit::code(&e), 2);
        assert!(e.to_string().contains("#cloud-config"));
        let e = parse_user_data("#cloud-config\nfoo: [\n", "bad.yaml").unwrap_err();
        assert!(e.to_string().contains("bad.yaml: not valid YAML"), "{e}");
        assert!(parse_user_data("#cloud-config\n- a\n", "l.yaml").is_err());
        assert!(parse_user_data("#cloud-config\n", "empty.yaml").unwrap().as_object().unwrap().is_empty());
    }

    #[test]
    fn user_data_cannot_take_away_what_project_vm_needs() {
        let err = |text: &str| parse_user_data(text, "u.yaml").unwrap_err();
        for (text, key) in [
            ("#cloud-config\nssh_keys:\n  ed25519_private: x\n", "ssh_keys"),
            ("#cloud-config\nssh_deletekeys: false\n", "ssh_deletekeys"),
            ("#cloud-config\nssh_genkeytypes: [rsa]\n", "ssh_genkeytypes"),
            ("#cloud-config\ncloud_final_modules: [final_message]\n", "cloud_final_modules"),
            (
                "#cloud-config\nwrite_files:\n- path: /etc/cloud/cloud.cfg.d//90-project-vm.cfg\n  content: x\n",
                "write_files[0].path",
            ),
            (
                "#cloud-config\nwrite_files:\n- {path: /tmp/ok}\n- {path: /usr/local/libexec/project-vm-ready}\n",
                "write_files[1].path",
            ),
            ("#cloud-config\nmounts:\n- [/dev/vdc, /project/]\n", "mounts[0]"),
            ("#cloud-config\nmounts:\n- [LABEL=project, /mnt]\n", "mounts[0]"),
        ] {
            let e = err(text);
            assert_eq!(crate::exit::code(&e), 2, "{text}");
            match e.downcast_ref::<ConfigError>() {
                Some(ConfigError::UnsafeCloudConfig { origin, keys }) => {
                    assert_eq!(origin, "u.yaml");
                    assert!(keys.len() == 1 && keys[0].starts_with(&format!("{key}:")), "{text}: {keys:?}");
                }
                other => panic!("{text}: {other:?}"),
            }
            assert!(e.to_string().starts_with("u.yaml: 1 key in the cloud-config"), "{text}: {e}");
        }
        // Several at once, all named.
        let e = err("#cloud-config\nssh_keys: {}\ncloud_init_modules: []\n");
        let Some(ConfigError::UnsafeCloudConfig { keys, .. }) = e.downcast_ref::<ConfigError>() else {
            panic!("{e:?}")
        };
        assert!(
            keys.len() == 2 && keys[0].starts_with("ssh_keys:") && keys[1].starts_with("cloud_init_modules:"),
            "{keys:?}"
        );
        assert!(e.to_string().contains("2 keys"), "{e}");
        // What merges stays allowed: other files, mounts, packages, runcmd, the hostname.
        let ok = "#cloud-config\nhostname: other\nwrite_files:\n- {path: /etc/motd, content: hi}\nmounts:\n- [/dev/vdc, /srv]\nruncmd: [true]\n";
        assert!(parse_user_data(ok, "ok.yaml").is_ok());
        // Every shipped feature passes the guard.
        let all: Vec<String> = crate::features::names();
        crate::features::cloud_config(&all).unwrap();
    }

    #[test]
    fn host_key_and_tailscale() {
        let s = spec(Network::default(), Accel::Kvm);
        let key = hostkey::HostKey::generate("project-foo").unwrap();
        let seed = render(&SeedInput {
            spec: &s,
            authorized_keys: &[],
            host_key: Some(&key),
            user_data: None,
            instance_id: "i",
            tailscale_auth_key: Some("tskey-auth-SECRET"),
        });
        let v = yaml(&seed.user_data);
        assert_eq!(v["ssh_keys"]["ed25519_public"], key.public_openssh.as_str());
        assert!(v["ssh_keys"]["ed25519_private"].as_str().unwrap().contains("BEGIN OPENSSH PRIVATE KEY"));
        assert_eq!(v["ssh_deletekeys"], true);
        let files = v["write_files"].as_array().unwrap();
        let ts = files.iter().find(|f| f["path"] == "/run/project-vm/ts-authkey").unwrap();
        assert_eq!(ts["content"], "tskey-auth-SECRET");
        assert_eq!(ts["permissions"], "0600");
        let join = v["runcmd"].as_array().unwrap().last().unwrap()[2].as_str().unwrap().to_owned();
        assert!(join.contains("--hostname=project-foo"), "{join}");
        assert!(!join.contains("SECRET"), "the key is read from a file, not put on a command line");
    }

    #[test]
    fn the_seed_carries_the_runner_the_application_script_and_the_checks() {
        let s = spec(Network::default(), Accel::Kvm);
        let input = SeedInput {
            spec: &s,
            authorized_keys: &[],
            host_key: None,
            user_data: None,
            instance_id: "i",
            tailscale_auth_key: None,
        };
        let file =
            |v: &Value, path: &str| v["write_files"].as_array().unwrap().iter().find(|f| f["path"] == path).cloned();
        // Always the runner (checks added later run through it); nothing else.
        let plain = yaml(&render(&input).user_data);
        assert_eq!(file(&plain, crate::health::RUNNER_PATH).unwrap()["content"], CHECKS_SCRIPT);
        assert!(
            file(&plain, crate::health::APPLICATION_PATH).is_none()
                && file(&plain, crate::health::DEFINITIONS_PATH).is_none()
        );
        let checks =
            crate::health::parse_checks("c", &json!([{"name": "web", "command": "curl -fsS localhost:8080/health"}]))
                .unwrap();
        let prov = Provisioning { application_script: Some("#!/bin/sh\necho hi\n"), checks: &checks };
        let v = yaml(&render_provisioned(&input, &prov).user_data);
        let app = file(&v, crate::health::APPLICATION_PATH).unwrap();
        assert_eq!(
            (app["content"].as_str(), app["permissions"].as_str()),
            (Some("#!/bin/sh\necho hi\n"), Some("0700"))
        );
        assert_eq!(file(&v, crate::health::DEFINITIONS_PATH).unwrap()["content"], crate::health::definitions(&checks));
        // A user's cloud-config may not replace them.
        let e =
            parse_user_data("#cloud-config\nwrite_files:\n- {path: /usr/local/libexec/project-vm-checks}\n", "u.yaml")
                .unwrap_err();
        assert!(matches!(e.downcast_ref(), Some(ConfigError::UnsafeCloudConfig { .. })), "{e}");
    }
}
