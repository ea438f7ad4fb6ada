//! The declarative file for `apply` and `plan`: host settings, `defaults`
//! merged into each of `vms`.
//!
//! Validation walks the JSON itself rather than stopping at serde's first
//! error: every problem is reported at once, each with its JSON path
//! (`vms.db.memory: "8X" is not a size like 512M or 8G`), and unknown keys get
//! a did-you-mean. Nothing is changed when any problem is found.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::settings::{HostSettings, HOST_SETTING_KEYS};
use crate::spec::{Firmware, PciAddress, Port, Resources, Share, Size, StaticNetwork, VmName};
use crate::suggest::did_you_mean;

pub mod error;

pub use error::ConfigError;

/// Keys a VM entry (and `defaults`) may have.
pub const VM_KEYS: &[&str] = &[
    "memory",
    "cpus",
    "disk",
    "project_disk",
    "autostart",
    "features",
    "user_data",
    "image",
    "depends_on",
    "firmware",
    "network_config",
    "hostdevs",
    "shares",
    "ports",
    "host",
    "stage_snapshots",
    "application_script",
    "checks",
];

/// One VM as the file describes it, defaults merged in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmDecl {
    pub name: VmName,
    #[serde(flatten)]
    pub resources: Resources,
    pub autostart: bool,
    pub features: Vec<String>,
    /// A cloud-config file (relative paths are relative to the declarative file).
    pub user_data: Option<PathBuf>,
    pub image: Option<String>,
    pub depends_on: Vec<VmName>,
    pub firmware: Firmware,
    pub network_config: Option<StaticNetwork>,
    pub hostdevs: Vec<PciAddress>,
    pub shares: Vec<Share>,
    /// Guest ports forwarded from the libvirt host.
    pub ports: Vec<Port>,
    /// The fleet host it lives on (`hosts`); `None`: the one host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Snapshots `pre-configured` and `final-form` on first provisioning.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stage_snapshots: bool,
    /// A script run once, last, on the first boot (relative paths are
    /// relative to the declarative file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application_script: Option<PathBuf>,
    /// Health checks: the defaults', then the VM's own (a VM's check of the
    /// same name replaces the defaults').
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<crate::health::Check>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    /// Host settings written in the same file (they win over the settings file).
    pub settings: HostSettings,
    /// Sorted by name.
    pub vms: BTreeMap<VmName, VmDecl>,
}

impl Declared {
    /// VMs in waves: each wave depends only on earlier ones (validated acyclic).
    pub fn waves(&self) -> Vec<Vec<VmName>> {
        let mut done: Vec<VmName> = Vec::new();
        let mut waves = Vec::new();
        while done.len() < self.vms.len() {
            let wave: Vec<VmName> = self
                .vms
                .values()
                .filter(|v| !done.contains(&v.name) && v.depends_on.iter().all(|d| done.contains(d)))
                .map(|v| v.name.clone())
                .collect();
            assert!(!wave.is_empty(), "dependency cycle survived validation");
            done.extend(wave.iter().cloned());
            waves.push(wave);
        }
        waves
    }
}

#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, path: &str, msg: impl std::fmt::Display) {
        self.0.push(format!("{path}: {msg}"));
    }
}

/// The fields of one entry before merging; `None` where absent.
#[derive(Default, Clone)]
struct Fields {
    memory: Option<Size>,
    cpus: Option<u32>,
    disk: Option<Size>,
    project_disk: Option<Size>,
    autostart: Option<bool>,
    features: Option<Vec<String>>,
    user_data: Option<PathBuf>,
    image: Option<String>,
    depends_on: Option<Vec<(usize, String)>>,
    firmware: Option<Firmware>,
    network_config: Option<StaticNetwork>,
    hostdevs: Option<Vec<PciAddress>>,
    shares: Option<Vec<Share>>,
    ports: Option<Vec<Port>>,
    host: Option<String>,
    stage_snapshots: Option<bool>,
    application_script: Option<PathBuf>,
    checks: Option<Vec<crate::health::Check>>,
}

fn show(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// A value of a serde type, or a problem at `at`.
fn typed<T: serde::de::DeserializeOwned>(at: &str, v: &Value, p: &mut Problems) -> Option<T> {
    serde_json::from_value(v.clone()).map_err(|e| p.add(at, e)).ok()
}

/// The fields of one entry (`defaults` or a VM's), each checked on its own.
fn fields(path: &str, v: &Value, p: &mut Problems, in_defaults: bool) -> Fields {
    let mut f = Fields::default();
    let Some(obj) = v.as_object() else {
        p.add(path, format!("expected an object of VM settings, found {}", show(v)));
        return f;
    };
    for (k, v) in obj {
        field(&mut f, &format!("{path}.{k}"), k, v, p, in_defaults);
    }
    f
}

/// Key `k` of an entry, at `at`, into `f`.
fn field(f: &mut Fields, at: &str, k: &str, v: &Value, p: &mut Problems, in_defaults: bool) {
    match k {
        "memory" => f.memory = size(at, v, p),
        "disk" => f.disk = size(at, v, p),
        "project_disk" => f.project_disk = size(at, v, p),
        "cpus" => f.cpus = cpus(at, v, p),
        "autostart" => match v.as_bool() {
            Some(b) => f.autostart = Some(b),
            None => p.add(at, format!("expected true or false, found {}", show(v))),
        },
        "features" => f.features = features(at, v, p),
        "user_data" => f.user_data = text(at, v, p, "expected the path of a cloud-config file").map(PathBuf::from),
        "image" => f.image = text(at, v, p, "expected an image volume name or path"),
        "firmware" => f.firmware = typed(at, v, p),
        "network_config" if in_defaults => {
            p.add(at, "network_config belongs in a VM's own entry (each VM needs its own address)")
        }
        "network_config" => f.network_config = network_config(at, v, p),
        "hostdevs" if in_defaults => p.add(at, "hostdevs belong in a VM's own entry (a device goes to one VM)"),
        "hostdevs" => f.hostdevs = typed(at, v, p),
        "shares" => f.shares = shares(at, v, p),
        "ports" if in_defaults => p.add(at, "ports belong in a VM's own entry (a host port goes to one VM)"),
        "ports" => f.ports = ports(at, v, p),
        "host" => f.host = text(at, v, p, "expected the name of a host in \"hosts\""),
        "stage_snapshots" => match v.as_bool() {
            Some(b) => f.stage_snapshots = Some(b),
            None => p.add(at, format!("expected true or false, found {}", show(v))),
        },
        "depends_on" if in_defaults => p.add(at, "depends_on belongs in a VM's own entry, not in defaults"),
        "depends_on" => f.depends_on = strings(at, v, p),
        "application_script" => {
            f.application_script = text(at, v, p, "expected the path of a script").map(PathBuf::from)
        }
        "checks" => f.checks = crate::health::parse_checks(at, v).map_err(|e| p.0.extend(e)).ok(),
        other => p.add(at, format!("unknown key{}; VM keys are {}", did_you_mean(other, VM_KEYS), VM_KEYS.join(", "))),
    }
}

/// A size written as a string.
fn size(at: &str, v: &Value, p: &mut Problems) -> Option<Size> {
    match v.as_str() {
        Some(s) => Size::parse(s).map_err(|e| p.add(at, e)).ok(),
        None => {
            p.add(at, format!("{} is not a size like \"512M\" or \"8G\" (write it as a string)", show(v)));
            None
        }
    }
}

fn cpus(at: &str, v: &Value, p: &mut Problems) -> Option<u32> {
    match v.as_u64() {
        Some(n) if (1..=crate::spec::MAX_CPUS as u64).contains(&n) => Some(n as u32),
        _ => {
            p.add(
                at,
                format!(
                    "{} is not a CPU count from 1 to {} (more needs x2APIC interrupt remapping, which project-vm does not set up)",
                    show(v),
                    crate::spec::MAX_CPUS
                ),
            );
            None
        }
    }
}

/// A non-empty string; else `expected` and what was found.
fn text(at: &str, v: &Value, p: &mut Problems, expected: &str) -> Option<String> {
    match v.as_str() {
        Some(s) if !s.is_empty() => Some(s.to_owned()),
        _ => {
            p.add(at, format!("{expected}, found {}", show(v)));
            None
        }
    }
}

/// A list of strings, each with its index (for paths like `depends_on[2]`).
fn strings(at: &str, v: &Value, p: &mut Problems) -> Option<Vec<(usize, String)>> {
    let Some(a) = v.as_array() else {
        p.add(at, format!("expected a list of strings, found {}", show(v)));
        return None;
    };
    let mut out = Vec::new();
    for (i, e) in a.iter().enumerate() {
        match e.as_str() {
            Some(s) => out.push((i, s.to_owned())),
            None => p.add(&format!("{at}[{i}]"), format!("expected a string, found {}", show(e))),
        }
    }
    Some(out)
}

/// Feature names; an unknown one is a problem with a did-you-mean.
fn features(at: &str, v: &Value, p: &mut Problems) -> Option<Vec<String>> {
    let list = strings(at, v, p)?;
    for (i, name) in &list {
        if let Err(e) = crate::features::check(name) {
            p.add(&format!("{at}[{i}]"), e);
        }
    }
    // Together: the merge rules between them.
    let names: Vec<String> = list.iter().map(|(_, s)| s.clone()).collect();
    if let (Err(e), true) =
        (crate::features::library().cloud_config(&names), names.iter().all(|n| crate::features::exists(n)))
    {
        p.add(at, e);
    }
    Some(list.into_iter().map(|(_, s)| s).collect())
}

fn network_config(at: &str, v: &Value, p: &mut Problems) -> Option<StaticNetwork> {
    typed::<StaticNetwork>(at, v, p).filter(|n| match n.validate() {
        Ok(()) => true,
        Err(e) => {
            p.add(at, e);
            false
        }
    })
}

/// The keys of one `ports` entry.
const PORT_KEYS: &[&str] = &["host", "guest", "address", "protocol"];

/// A VM's `ports`: every entry checked and each bad one named by its index
/// (`vms.web.ports[1].proto: unknown key (did you mean "protocol"?)`), no
/// host port twice.
fn ports(at: &str, v: &Value, p: &mut Problems) -> Option<Vec<Port>> {
    let Some(entries) = v.as_array() else {
        p.add(at, format!("expected a list of ports, e.g. [{{\"host\": 8080, \"guest\": 80}}], found {}", show(v)));
        return None;
    };
    let mut list = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (i, entry) in entries.iter().enumerate() {
        let here = format!("{at}[{i}]");
        let unknown: Vec<&String> =
            entry.as_object().into_iter().flat_map(|o| o.keys()).filter(|k| !PORT_KEYS.contains(&k.as_str())).collect();
        for k in &unknown {
            let known = PORT_KEYS.join(", ");
            p.add(
                &format!("{here}.{k}"),
                format!("unknown key{}; a port's keys are {known}", did_you_mean(k, PORT_KEYS)),
            );
        }
        if !unknown.is_empty() {
            continue;
        }
        let Some(fields) = entry.as_object() else {
            p.add(&here, format!("expected a port like {{\"host\": 8080, \"guest\": 80}}, found {}", show(entry)));
            continue;
        };
        let bad: Vec<(&String, String)> =
            fields.iter().filter_map(|(k, v)| port_field_problem(k, v).map(|why| (k, why))).collect();
        for (k, why) in &bad {
            p.add(&format!("{here}.{k}"), why);
        }
        if !bad.is_empty() {
            continue;
        }
        let Some(port) = typed::<Port>(&here, entry, p) else { continue };
        match port.validate() {
            Err(e) => p.add(&here, e),
            Ok(()) if !seen.insert((port.host, port.protocol)) => p.add(
                &here,
                format!("port {}: host port {}/{} is given twice", port.label(), port.host, port.protocol.as_str()),
            ),
            Ok(()) => list.push(port),
        }
    }
    // The good ones even when others are bad: a clash with another VM's
    // port is found in the same run (the file is refused all the same).
    Some(list)
}

/// What is wrong with one key of a `ports` entry, said of that key.
fn port_field_problem(key: &str, v: &Value) -> Option<String> {
    match key {
        "host" | "guest" => match v.as_u64() {
            Some(n) if n <= u64::from(u16::MAX) => None,
            _ => Some(format!("expected a port number from 1 to 65535, found {}", show(v))),
        },
        "address" => match v.as_str().map(str::parse::<std::net::IpAddr>) {
            Some(Ok(_)) => None,
            _ => Some(format!("expected an IP address such as \"127.0.0.1\" or \"::1\", found {}", show(v))),
        },
        "protocol" => match v.as_str() {
            Some("tcp" | "udp") => None,
            _ => Some(format!("expected \"tcp\" or \"udp\", found {}", show(v))),
        },
        _ => None,
    }
}

/// Two VMs on one host cannot both forward a host port.
fn shared_ports(vms: &BTreeMap<VmName, VmDecl>, p: &mut Problems) {
    let mut seen: BTreeMap<(Option<&str>, u16, crate::spec::Protocol), &VmName> = BTreeMap::new();
    for vm in vms.values() {
        for port in &vm.ports {
            // The first VM to forward a port owns it; each later one is named.
            let owner = *seen.entry((vm.host.as_deref(), port.host, port.protocol)).or_insert(&vm.name);
            if owner != &vm.name {
                p.add(
                    &format!("vms.{}.ports", vm.name),
                    format!(
                        "host port {}/{} ({}) is vms.{owner}'s too: give each VM its own",
                        port.host,
                        port.protocol.as_str(),
                        port.label()
                    ),
                );
            }
        }
    }
}

/// Shares, each checked as `--share` checks one.
fn shares(at: &str, v: &Value, p: &mut Problems) -> Option<Vec<Share>> {
    typed::<Vec<Share>>(at, v, p).filter(|list| {
        let bad: Vec<ConfigError> = list.iter().filter_map(|s| s.validate().err()).collect();
        bad.iter().for_each(|e| p.add(at, e));
        bad.is_empty()
    })
}

/// Parses and validates a declarative file. `origin` names it in messages;
/// `base_dir` resolves relative `user_data` paths.
pub fn parse(text: &str, origin: &str, base_dir: &Path) -> anyhow::Result<Declared> {
    let root: Value = crate::jsonfile::parse(text, origin)?;
    let Some(root) = root.as_object() else {
        return Err(ConfigError::invalid(format!(
            "{origin}: expected a JSON object with \"vms\" (and optionally \"defaults\")"
        )));
    };
    let mut p = Problems::default();
    top_keys(root, &mut p);
    let settings = host_settings(root, &mut p);
    // The file's own feature directories name the features its VMs may use.
    if let (Some(dirs), true) = (&settings.feature_dirs, p.0.is_empty()) {
        crate::features::use_dirs(dirs);
    }
    let defaults = root.get("defaults").map(|d| fields("defaults", d, &mut p, true)).unwrap_or_default();
    let raw = entries(root, &mut p);
    let vms: BTreeMap<VmName, VmDecl> = raw
        .iter()
        .map(|(name, (path, f))| (name.clone(), declaration(name, path, f, &defaults, &raw, base_dir, &mut p)))
        .collect();
    shared_ports(&vms, &mut p);
    stage_snapshots_need_bios(&vms, &mut p);
    if let Some(cycle) = find_cycle(&vms) {
        p.add("depends_on", format!("dependency cycle: {}", cycle.join(" -> ")));
    }
    if !p.0.is_empty() {
        // By path, numbers as numbers: ports[9] before ports[10].
        p.0.sort_by_cached_key(|line| natural_key(line));
        return Err(ConfigError::File { origin: origin.to_owned(), problems: p.0 }.into());
    }
    Ok(Declared { settings, vms })
}

/// `line` cut into text and numbers, so that numbers sort by value.
fn natural_key(line: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while chars.peek().is_some() {
        let text: String = std::iter::from_fn(|| chars.next_if(|c| !c.is_ascii_digit())).collect();
        let digits: String = std::iter::from_fn(|| chars.next_if(char::is_ascii_digit)).collect();
        out.push((text, digits.parse().unwrap_or(u64::MAX)));
    }
    out
}

/// Top-level keys: `defaults`, `vms` and the host settings' keys.
fn top_keys(root: &serde_json::Map<String, Value>, p: &mut Problems) {
    let mut top_keys: Vec<&str> = vec!["defaults", "vms"];
    top_keys.extend(HOST_SETTING_KEYS);
    for k in root.keys() {
        if !HOST_SETTING_KEYS.contains(&k.as_str()) && k != "defaults" && k != "vms" {
            p.add(k, format!("unknown key{}; top-level keys are {}", did_you_mean(k, &top_keys), top_keys.join(", ")));
        }
    }
}

/// The host settings written in the file, their problems added.
fn host_settings(root: &serde_json::Map<String, Value>, p: &mut Problems) -> HostSettings {
    let mut setting_problems = Vec::new();
    let settings = HostSettings::from_keys(root, &mut setting_problems);
    setting_problems.extend(settings.problems());
    p.0.extend(setting_problems);
    settings
}

/// The entries of `vms` by name, each with its path and fields.
fn entries(root: &serde_json::Map<String, Value>, p: &mut Problems) -> BTreeMap<VmName, (String, Fields)> {
    let mut raw = BTreeMap::new();
    match root.get("vms") {
        None => p.add("vms", "missing: declare at least one VM (\"vms\": {\"web\": {}})"),
        Some(Value::Object(vms)) => {
            for (name, v) in vms {
                let path = format!("vms.{name}");
                let f = fields(&path, v, p, false);
                match VmName::parse(name) {
                    Ok(n) => {
                        raw.insert(n, (path, f));
                    }
                    Err(e) => p.add(&path, e),
                }
            }
        }
        Some(other) => p.add("vms", format!("expected an object of VMs by name, found {}", show(other))),
    }
    raw
}

/// One VM: its own fields, else the defaults', else the built-in ones.
/// Stage snapshots are internal snapshots, which libvirt does not take of a
/// UEFI VM (passthrough implies UEFI): refused here, where `plan` sees it.
fn stage_snapshots_need_bios(vms: &BTreeMap<VmName, VmDecl>, p: &mut Problems) {
    for v in vms.values().filter(|v| v.stage_snapshots) {
        if v.firmware == crate::spec::Firmware::Efi || !v.hostdevs.is_empty() {
            p.add(
                &format!("vms.{}.stage_snapshots", v.name),
                "needs a BIOS VM (this one boots UEFI, and libvirt takes no internal snapshot of its firmware variables): drop stage_snapshots, or boot it bios",
            );
        }
    }
}

fn declaration(
    name: &VmName,
    path: &str,
    f: &Fields,
    d: &Fields,
    raw: &BTreeMap<VmName, (String, Fields)>,
    base_dir: &Path,
    p: &mut Problems,
) -> VmDecl {
    let base = Resources::default();
    let resources = Resources {
        memory: f.memory.or(d.memory).unwrap_or(base.memory),
        cpus: f.cpus.or(d.cpus).unwrap_or(base.cpus),
        disk: f.disk.or(d.disk).unwrap_or(base.disk),
        project_disk: f.project_disk.or(d.project_disk).unwrap_or(base.project_disk),
    };
    if let Err(e) = resources.validate() {
        p.add(path, e);
    }
    let user_data =
        f.user_data.clone().or(d.user_data.clone()).map(|u| if u.is_relative() { base_dir.join(u) } else { u });
    VmDecl {
        name: name.clone(),
        resources,
        autostart: f.autostart.or(d.autostart).unwrap_or(false),
        features: f.features.clone().or(d.features.clone()).unwrap_or_default(),
        user_data,
        image: f.image.clone().or(d.image.clone()),
        depends_on: depends_on(name, path, f, raw, p),
        firmware: f.firmware.or(d.firmware).unwrap_or_default(),
        network_config: f.network_config.clone(),
        hostdevs: f.hostdevs.clone().unwrap_or_default(),
        // A VM's own list replaces the defaults' (lists are not merged).
        shares: f.shares.clone().or(d.shares.clone()).unwrap_or_default(),
        host: f.host.clone().or(d.host.clone()),
        ports: f.ports.clone().unwrap_or_default(),
        stage_snapshots: f.stage_snapshots.or(d.stage_snapshots).unwrap_or(false),
        application_script: f.application_script.clone().or(d.application_script.clone()).map(|u| {
            if u.is_relative() {
                base_dir.join(u)
            } else {
                u
            }
        }),
        checks: merged_checks(d.checks.as_deref().unwrap_or_default(), f.checks.as_deref().unwrap_or_default()),
    }
}

/// The defaults' checks, then the VM's own; a VM's check replaces the
/// defaults' of the same name (in its place).
fn merged_checks(defaults: &[crate::health::Check], own: &[crate::health::Check]) -> Vec<crate::health::Check> {
    let mut out: Vec<crate::health::Check> =
        defaults.iter().map(|d| own.iter().find(|o| o.name == d.name).unwrap_or(d).clone()).collect();
    out.extend(own.iter().filter(|o| !defaults.iter().any(|d| d.name == o.name)).cloned());
    out
}

/// `depends_on`: VMs of this file, never the VM itself.
fn depends_on(
    name: &VmName,
    path: &str,
    f: &Fields,
    raw: &BTreeMap<VmName, (String, Fields)>,
    p: &mut Problems,
) -> Vec<VmName> {
    // Its own name is never a suggestion: a VM cannot depend on itself.
    let names: Vec<&str> = raw.keys().filter(|n| *n != name).map(VmName::as_str).collect();
    let mut out = Vec::new();
    for (i, dep) in f.depends_on.clone().unwrap_or_default() {
        let at = format!("{path}.depends_on[{i}]");
        match VmName::parse(&dep) {
            Ok(n) if &n == name => p.add(&at, "a VM cannot depend on itself"),
            Ok(n) if raw.contains_key(&n) => out.push(n),
            _ => p.add(&at, format!("{dep:?} is not a VM in this file{}", did_you_mean(&dep, &names))),
        }
    }
    out
}

fn find_cycle(vms: &BTreeMap<VmName, VmDecl>) -> Option<Vec<String>> {
    fn visit(
        n: &VmName,
        vms: &BTreeMap<VmName, VmDecl>,
        stack: &mut Vec<VmName>,
        done: &mut Vec<VmName>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|s| s == n) {
            let mut c: Vec<String> = stack[pos..].iter().map(|s| s.to_string()).collect();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.clone());
        for d in vms.get(n).map(|v| v.depends_on.as_slice()).unwrap_or_default() {
            if let Some(c) = visit(d, vms, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.push(n.clone());
        None
    }
    let mut done = Vec::new();
    vms.keys().find_map(|n| visit(n, vms, &mut Vec::new(), &mut done))
}

pub fn load(path: &Path) -> anyhow::Result<Declared> {
    let text = crate::files::read_text(path, "declarative file", crate::files::CONFIG_MAX)?;
    parse(&text, &path.display().to_string(), path.parent().unwrap_or(Path::new(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Declared {
        parse(text, "f.json", Path::new("/etc/pv")).unwrap()
    }

    /// The problems of a refused file, one a line, and the message's head.
    fn problems(text: &str) -> String {
        let e = parse(text, "f.json", Path::new("/")).unwrap_err();
        assert_eq!(crate::exit::code(&e), 2);
        match e.downcast_ref::<ConfigError>() {
            Some(ConfigError::File { origin, problems }) => {
                assert_eq!(origin, "f.json");
                let mut sorted = problems.clone();
                sorted.sort();
                assert_eq!(&sorted, problems, "sorted");
                e.to_string()
            }
            Some(ConfigError::Invalid(_)) => e.to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stage_snapshots_of_a_uefi_vm_are_refused_in_the_file() {
        let e =
            problems(r#"{"vms": {"a": {"stage_snapshots": true, "firmware": "efi"}, "b": {"stage_snapshots": true}}}"#);
        assert!(e.contains("vms.a.stage_snapshots: needs a BIOS VM"), "{e}");
        assert!(!e.contains("vms.b"), "{e}");
        ok(r#"{"vms": {"b": {"stage_snapshots": true}, "c": {"firmware": "efi"}}}"#);
    }

    #[test]
    fn shares_in_defaults_go_to_every_vm_unless_a_vm_has_its_own() {
        let d = ok(r#"{"defaults": {"shares": [{"source": "/srv/data", "target": "/mnt/data", "readonly": true}]},
            "vms": {"a": {}, "b": {"shares": [{"source": "/srv/b", "target": "/mnt/b"}]}, "c": {"shares": []}}}"#);
        let shares = |n: &str| d.vms[&VmName::parse(n).unwrap()].shares.clone();
        assert_eq!(shares("a"), vec![Share { source: "/srv/data".into(), target: "/mnt/data".into(), readonly: true }]);
        assert_eq!(shares("b"), vec![Share { source: "/srv/b".into(), target: "/mnt/b".into(), readonly: false }]);
        assert_eq!(shares("c"), vec![], "a VM's own empty list wins");
        // And they are checked where they are written.
        let e = problems(r#"{"defaults": {"shares": [{"source": "/etc", "target": "/mnt/etc"}]}, "vms": {"a": {}}}"#);
        assert!(e.contains("defaults.shares: share /etc:/mnt/etc: the source /etc is, lies in or contains"), "{e}");
    }

    #[test]
    fn features_and_resources_are_refused_by_their_own_variants() {
        let mut p = Problems::default();
        assert_eq!(features("vms.a.features", &serde_json::json!(["dokcer"]), &mut p), Some(vec!["dokcer".into()]));
        assert_eq!(p.0, vec!["vms.a.features[0]: unknown feature \"dokcer\" (did you mean \"docker\"?): known features are base, devtools, docker, docker-gpu, nix, nvidia"]);
        assert!(matches!(crate::features::check("dokcer"), Err(ConfigError::UnknownFeature { .. })));
        let e = problems(r#"{"vms": {"a": {"project_disk": "1M"}}}"#);
        assert!(e.contains("vms.a: project_disk 1M is below the minimum of 64M"), "{e}");
    }

    #[test]
    fn defaults_merge_into_each_vm() {
        let d = ok(r#"{
          "defaults": { "memory": "4G", "cpus": 2, "disk": "20G", "project_disk": "50G", "features": ["base"] },
          "vms": { "web": { "memory": "8G", "cpus": 4, "autostart": true }, "db": { "disk": "100G", "depends_on": ["web"], "user_data": "db.yaml" } }
        }"#);
        let web = &d.vms[&VmName::parse("web").unwrap()];
        assert_eq!(
            web.resources,
            Resources { memory: Size(8 << 30), cpus: 4, disk: Size(20 << 30), project_disk: Size(50 << 30) }
        );
        assert!(web.autostart);
        assert_eq!(web.features, vec!["base"]);
        let db = &d.vms[&VmName::parse("db").unwrap()];
        assert_eq!(db.resources.memory, Size(4 << 30));
        assert_eq!(db.resources.disk, Size(100 << 30));
        assert!(!db.autostart);
        assert_eq!(db.user_data.as_deref(), Some(Path::new("/etc/pv/db.yaml")));
        assert_eq!(d.waves(), vec![vec![VmName::parse("web").unwrap()], vec![VmName::parse("db").unwrap()]]);
    }

    #[test]
    fn stage_snapshots_is_a_vm_key_defaults_may_set() {
        let d = ok(
            r#"{"defaults": {"stage_snapshots": true}, "vms": {"a": {}, "b": {"stage_snapshots": false}, "c": {}}}"#,
        );
        let stage = |n: &str| d.vms[&VmName::parse(n).unwrap()].stage_snapshots;
        assert_eq!((stage("a"), stage("b"), stage("c")), (true, false, true));
        assert!(!ok(r#"{"vms": {"a": {}}}"#).vms[&VmName::parse("a").unwrap()].stage_snapshots, "off unless asked");
        let e = problems(r#"{"vms": {"a": {"stage_snapshots": "yes"}, "b": {"stage_snapshot": true}}}"#);
        assert!(e.contains(r#"vms.a.stage_snapshots: expected true or false, found "yes""#), "{e}");
        assert!(e.contains(r#"vms.b.stage_snapshot: unknown key (did you mean "stage_snapshots"?)"#), "{e}");
    }

    #[test]
    fn built_in_defaults_apply() {
        let d = ok(r#"{"vms": {"a": {}}}"#);
        assert_eq!(d.vms[&VmName::parse("a").unwrap()].resources, Resources::default());
    }

    #[test]
    fn host_settings_may_share_the_file() {
        let d = ok(r#"{"accel": "tcg", "tailnet": "example.ts.net", "vms": {"a": {}}}"#);
        assert_eq!(d.settings.accel, Some(crate::settings::Accel::Tcg));
        assert_eq!(d.settings.tailnet.as_deref(), Some("example.ts.net"));
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let e = problems(
            r#"{
              "defualts": {},
              "accel": "hvf",
              "defaults": { "memory": "8X", "depends_on": ["x"] },
              "vms": {
                "db": { "memory": "8X", "cpus": 0, "depends_on": ["wbe"], "featrues": [], "features": ["dokcer", 3] },
                "Bad_Name": {},
                "web": { "disk": 20 }
              }
            }"#,
        );
        for needle in [
            "defualts: unknown key (did you mean \"defaults\"?)",
            "accel: unknown variant `hvf`",
            "defaults.memory: \"8X\" is not a size like 512M or 8G",
            "defaults.depends_on: depends_on belongs in a VM's own entry",
            "vms.db.memory: \"8X\" is not a size like 512M or 8G",
            "vms.db.cpus: 0 is not a CPU count from 1 to 255",
            "vms.db.depends_on[0]: \"wbe\" is not a VM in this file (did you mean \"web\"?)",
            "vms.db.featrues: unknown key (did you mean \"features\"?)",
            "vms.db.features[0]: unknown feature \"dokcer\" (did you mean \"docker\"?)",
            "vms.db.features[1]: expected a string, found 3",
            "vms.Bad_Name: invalid VM name",
            "vms.web.disk: 20 is not a size like \"512M\" or \"8G\"",
            "nothing was changed",
        ] {
            assert!(e.contains(needle), "missing {needle:?} in:\n{e}");
        }
    }

    #[test]
    fn duplicate_keys_and_bad_settings_are_problems_too() {
        let e = problems(r#"{"vms": {"a": {"memory": "1G", "memory": "2G"}}}"#);
        assert!(e.contains("written twice") && e.contains("vms.a.memory"), "{e}");
        let e = problems(r#"{"storage_dir": "relative", "accel": "hvf", "vms": {"a": {"memory": "8X"}}}"#);
        assert!(e.contains("3 problems") && e.contains("storage_dir:") && e.contains("accel:"), "{e}");
    }

    #[test]
    fn devices_in_the_file() {
        let d = ok(r#"{"defaults": {"firmware": "efi"}, "vms": {"a": {"hostdevs": ["0000:01:00.0"],
            "network_config": {"address": "10.0.0.5/24", "gateway": "10.0.0.1", "dns": ["10.0.0.1"]}}}}"#);
        let a = &d.vms[&VmName::parse("a").unwrap()];
        assert_eq!(a.firmware, Firmware::Efi);
        assert_eq!(a.hostdevs[0].to_string(), "0000:01:00.0");
        assert_eq!(a.network_config.as_ref().unwrap().address.to_string(), "10.0.0.5/24");
        let e = problems(
            r#"{"defaults": {"network_config": {"address": "10.0.0.5/24"}, "firmware": "uefi"},
                "vms": {"a": {"hostdevs": ["1:2:3"], "network_config": {"address": "10.0.0.5/24", "gateway": "10.1.0.1"}}}}"#,
        );
        for want in
            ["defaults.network_config: network_config belongs", "defaults.firmware:", "vms.a.hostdevs:", "outside"]
        {
            assert!(e.contains(want), "{want} missing from {e}");
        }
    }

    #[test]
    fn ports_in_the_file() {
        let d = ok(
            r#"{"vms": {"web": {"ports": [{"host": 8080, "guest": 80}, {"host": 5353, "guest": 53, "protocol": "udp", "address": "0.0.0.0"}]}}}"#,
        );
        let web = &d.vms[&VmName::parse("web").unwrap()];
        assert_eq!(
            web.ports.iter().map(Port::label).collect::<Vec<_>>(),
            ["127.0.0.1:8080 -> 80/tcp", "0.0.0.0:5353 -> 53/udp"]
        );
        let e = problems(
            r#"{"defaults": {"ports": [{"host": 8080, "guest": 80}]},
                "vms": {"a": {"ports": [{"host": 0, "guest": 80}]},
                        "b": {"ports": [{"host": 9000, "guest": 80}, {"host": 9000, "guest": 81}]},
                        "c": {"ports": [{"host": 7000, "guest": 80}]},
                        "d": {"ports": [{"host": 7000, "guest": 22}]},
                        "e": {"ports": [{"host": 7001, "guest": 80, "proto": "udp"}]},
                        "f": {"ports": [{"host": 0, "guest": 80}, {"host": 7002, "guest": 80}, {"host": 7003, "guest": "http"}, {"host": 7004, "guest": 0}, 8080]},
                        "g": {"ports": [{"host": 7000, "guest": 80}, {"host": 7005, "guest": 80, "address": "localhost", "protocol": null}]}}}"#,
        );
        for want in [
            "defaults.ports: ports belong in a VM's own entry",
            "vms.a.ports[0]: port 127.0.0.1:0 -> 80/tcp: 0 is not a port",
            "vms.b.ports[1]: port 127.0.0.1:9000 -> 81/tcp: host port 9000/tcp is given twice",
            "vms.d.ports: host port 7000/tcp (127.0.0.1:7000 -> 22/tcp) is vms.c's too",
            "vms.e.ports[0].proto: unknown key (did you mean \"protocol\"?); a port's keys are host, guest, address, protocol",
            // Every bad entry of one VM at once, each by its index; the good one is not named.
            "vms.f.ports[0]: port 127.0.0.1:0 -> 80/tcp: 0 is not a port",
            "vms.f.ports[2].guest: expected a port number from 1 to 65535, found \"http\"",
            "vms.f.ports[3]: port 127.0.0.1:7004 -> 0/tcp",
            "vms.f.ports[4]: expected a port like {\"host\": 8080, \"guest\": 80}, found 8080",
            // A bad key is named by its path; the VM's good entry still meets the others'.
            "vms.g.ports[1].address: expected an IP address such as \"127.0.0.1\" or \"::1\", found \"localhost\"",
            "vms.g.ports[1].protocol: expected \"tcp\" or \"udp\", found null",
            "vms.g.ports: host port 7000/tcp (127.0.0.1:7000 -> 80/tcp) is vms.c's too",
        ] {
            assert!(e.contains(want), "{want} missing from {e}");
        }
    }

    #[test]
    fn problems_sort_by_path_with_numbers_as_numbers() {
        let mut lines = vec!["vms.a.ports[10]: x", "vms.a.ports[9]: x", "vms.a.memory: x", "vms.a.ports[100]: x"];
        lines.sort_by_cached_key(|l| natural_key(l));
        assert_eq!(lines, ["vms.a.memory: x", "vms.a.ports[9]: x", "vms.a.ports[10]: x", "vms.a.ports[100]: x"]);
    }

    #[test]
    fn cycles_and_self_dependencies() {
        let e = problems(r#"{"vms": {"a": {"depends_on": ["b"]}, "b": {"depends_on": ["a"]}}}"#);
        assert!(e.contains("dependency cycle: a -> b -> a"), "{e}");
        let e = problems(r#"{"vms": {"a": {"depends_on": ["a"]}}}"#);
        assert!(e.contains("cannot depend on itself"), "{e}");
    }

    /// The document the NixOS module writes (tests/fixtures/module-vms.json is
    /// generated by evaluating nix/module.nix; tests/nix/module-eval.sh keeps
    /// it in step) is read by the same parser `apply` uses.
    #[test]
    fn reads_what_the_nixos_module_writes() {
        let d = parse(include_str!("../tests/fixtures/module-vms.json"), "module-vms.json", Path::new("/nix/store"))
            .unwrap();
        assert_eq!(d.settings.tailnet.as_deref(), Some("example.ts.net"));
        assert_eq!(d.settings.tailscale_auth_key_file.as_deref(), Some(Path::new("/run/secrets/tailscale-auth-key")));
        assert_eq!(d.settings.network, Some(crate::settings::Network::Network { name: "default".into() }));
        assert_eq!(d.settings.base_image.as_deref(), Some("debian-13"));
        let mirror = &d.settings.images.as_ref().unwrap()["debian-13"];
        assert!(mirror.url.ends_with("debian-13-genericcloud-amd64.qcow2") && mirror.checksums.is_some());
        let web = &d.vms[&VmName::parse("web").unwrap()];
        assert_eq!((web.resources.memory, web.resources.cpus, web.autostart), (Size(8 << 30), 4, true));
        assert_eq!(web.resources.project_disk, Size(50 << 30), "from defaults");
        assert_eq!(
            web.ports.iter().map(Port::label).collect::<Vec<_>>(),
            ["127.0.0.1:8080 -> 80/tcp", "0.0.0.0:5353 -> 53/udp"]
        );
        assert!(web.stage_snapshots, "stageSnapshots");
        let db = &d.vms[&VmName::parse("db").unwrap()];
        assert_eq!(db.depends_on, vec![VmName::parse("web").unwrap()]);
        assert_eq!(db.features, vec!["base"]);
        assert_eq!(db.resources.disk, Size(100 << 30));
        assert_eq!(db.firmware, Firmware::Efi);
        assert!(db.shares[0].readonly && db.shares[0].target == Path::new("/mnt/data"));
        assert_eq!(db.network_config.as_ref().unwrap().gateway, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(db.firmware, Firmware::Efi);
        assert!(db.shares[0].readonly && db.shares[0].target == Path::new("/mnt/data"));
        assert_eq!(db.network_config.as_ref().unwrap().gateway, Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn shape_errors() {
        assert!(problems("[]").contains("expected a JSON object"));
        assert!(problems("{").contains("not valid JSON"));
        assert!(problems("{}").contains("vms: missing"));
        assert!(problems(r#"{"vms": {"a": {"memory": "64M"}}}"#).contains("vms.a: memory 64M is below the minimum"));
    }

    #[test]
    fn application_scripts_and_checks_are_read_and_merged() {
        let d = ok(r#"{"defaults": {"application_script": "app.sh", "checks": [
              {"name": "ssh", "command": "systemctl is-active ssh"},
              {"name": "web", "command": "curl -fsS localhost:8080/health"}]},
            "vms": {
              "a": {},
              "b": {"application_script": "/srv/b.sh", "checks": [
                {"name": "web", "command": "curl -fsS localhost:9090/health", "timeout": "5s"},
                {"name": "db", "command": "pg_isready", "retries": 0}]}}}"#);
        let a = &d.vms[&VmName::parse("a").unwrap()];
        assert_eq!(a.application_script.as_deref(), Some(Path::new("/etc/pv/app.sh")), "beside the file");
        assert_eq!(a.checks.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), vec!["ssh", "web"]);
        let b = &d.vms[&VmName::parse("b").unwrap()];
        assert_eq!(b.application_script.as_deref(), Some(Path::new("/srv/b.sh")));
        let names: Vec<(&str, &str)> = b.checks.iter().map(|c| (c.name.as_str(), c.command.as_str())).collect();
        assert_eq!(
            names,
            vec![("ssh", "systemctl is-active ssh"), ("web", "curl -fsS localhost:9090/health"), ("db", "pg_isready")],
            "the VM's web replaces the defaults' in its place; its own come after"
        );
        assert_eq!(b.checks[1].timeout, std::time::Duration::from_secs(5));
    }

    #[test]
    fn bad_checks_and_scripts_are_named_with_every_other_problem() {
        let e = problems(
            r#"{"vms": {"a": {"checks": [{"name": "web"}], "application_script": 3}, "b": {"checks": "curl"}, "c": {"chekcs": []}}}"#,
        );
        assert!(e.contains("vms.a.checks[0]: missing field `command`"), "{e}");
        assert!(e.contains("vms.a.application_script: expected the path of a script"), "{e}");
        assert!(e.contains("vms.b.checks: expected a list of checks"), "{e}");
        assert!(e.contains("vms.c.chekcs: unknown key (did you mean \"checks\"?)"), "{e}");
    }
}
