//! Host settings: where disks live, which image to boot, how guests are reached.
//!
//! Read from a JSON file (`--config`, `PROJECT_VM_CONFIG`, or the system file
//! overlaid by the user's). Every key is optional; [`Settings`] is the resolved form.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::config::error::ConfigError;
use crate::images::catalog::{ImageSource, DEFAULT_IMAGE};
use crate::libvirt::daemon::Daemon;

pub const SYSTEM_CONFIG: &str = "/etc/project-vm/config.json";
pub const DEFAULT_POOL: &str = "project-vm";
/// The first loopback port user networking forwards to a guest's ssh.
pub const DEFAULT_SSH_PORT: u16 = 22022;

// The spec's own types, named here too because the settings file sets them.
pub use crate::spec::{Accel, Network};

/// The settings file as written: every key optional, unknown keys rejected.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<Accel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_authorized_keys: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tailnet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tailscale_auth_key_file: Option<PathBuf>,
    /// Images to add to, or override in, the built-in catalog (mirrors, local files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<BTreeMap<String, ImageSource>>,
    /// Directories of the user's own features, earlier ones first
    /// (default: [`crate::features::default_dirs`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_dirs: Option<Vec<PathBuf>>,
    /// Several libvirt hosts (a fleet), by name: each a URI and the settings
    /// that differ there. Parsed by hand ([`HostSettings::from_keys`]): an
    /// entry is a `uri` plus settings keys.
    #[serde(skip)]
    pub hosts: Option<BTreeMap<String, HostEntry>>,
    /// Which of the daemon-specific keys came from the system settings file
    /// ([`SYSTEM_CONFIG`], which a NixOS host writes for its system daemon):
    /// a session daemon ignores those and keeps its own defaults.
    #[serde(skip)]
    pub from_system_file: SystemKeys,
}

/// The keys of the system settings file that describe the system daemon
/// only: its storage directory and its network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SystemKeys {
    pub storage_dir: bool,
    pub network: bool,
}

/// One host of a fleet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostEntry {
    pub uri: String,
    /// Overlaid on the common settings.
    pub settings: HostSettings,
}

pub const HOST_SETTING_KEYS: &[&str] = &[
    "storage_dir",
    "pool",
    "base_image",
    "accel",
    "network",
    "ssh_user",
    "ssh_authorized_keys",
    "tailnet",
    "tailscale_auth_key_file",
    "images",
    "hosts",
    "feature_dirs",
];

impl HostSettings {
    /// `other`'s keys win over ours.
    /// `images` and `hosts` merge by name, the rest key by key.
    pub fn overlay(mut self, mut other: HostSettings) -> HostSettings {
        // Maps merge by name: theirs win.
        fn merge<V>(
            mine: Option<BTreeMap<String, V>>,
            theirs: Option<BTreeMap<String, V>>,
        ) -> Option<BTreeMap<String, V>> {
            match (mine, theirs) {
                (Some(mut mine), Some(theirs)) => {
                    mine.extend(theirs);
                    Some(mine)
                }
                (mine, theirs) => theirs.or(mine),
            }
        }
        if other.storage_dir.is_some() {
            self.from_system_file.storage_dir = other.from_system_file.storage_dir;
        }
        if other.network.is_some() {
            self.from_system_file.network = other.from_system_file.network;
        }
        self.hosts = merge(self.hosts.take(), other.hosts.take());
        self.images = merge(self.images.take(), other.images.take());
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(
            storage_dir,
            pool,
            base_image,
            accel,
            network,
            ssh_user,
            ssh_authorized_keys,
            tailnet,
            tailscale_auth_key_file,
            feature_dirs
        );
        self
    }

    /// Parses a settings file, reporting every problem in it at once.
    pub fn from_json(text: &str, origin: &str) -> anyhow::Result<HostSettings> {
        let root = crate::jsonfile::parse(text, origin)?;
        let Some(obj) = root.as_object() else {
            return Err(ConfigError::invalid(format!("{origin}: expected a JSON object of settings")));
        };
        let mut problems = Vec::new();
        for k in obj.keys().filter(|k| !HOST_SETTING_KEYS.contains(&k.as_str())) {
            problems.push(format!(
                "{k}: unknown setting{}; settings are {}",
                crate::suggest::did_you_mean(k, HOST_SETTING_KEYS),
                HOST_SETTING_KEYS.join(", ")
            ));
        }
        let settings = Self::from_keys(obj, &mut problems);
        problems.extend(settings.problems());
        if problems.is_empty() {
            return Ok(settings);
        }
        problems.sort();
        Err(ConfigError::File { origin: origin.to_owned(), problems }.into())
    }

    /// The settings keys of `obj`, each parsed on its own so that one bad
    /// value does not hide the next; problems go to `problems` as `key: why`.
    /// Keys that are not settings are ignored (the caller decides about them).
    pub fn from_keys(obj: &serde_json::Map<String, serde_json::Value>, problems: &mut Vec<String>) -> HostSettings {
        let mut good = serde_json::Map::new();
        let hosts = obj.get("hosts").map(|v| parse_hosts(v, problems));
        for (k, v) in obj.iter().filter(|(k, _)| HOST_SETTING_KEYS.contains(&k.as_str()) && *k != "hosts") {
            let one = serde_json::Value::Object(serde_json::Map::from_iter([(k.clone(), v.clone())]));
            match serde_json::from_value::<HostSettings>(one) {
                Ok(_) => {
                    good.insert(k.clone(), v.clone());
                }
                Err(e) => problems.push(format!("{k}: {e}")),
            }
        }
        let settings: HostSettings = serde_json::from_value(serde_json::Value::Object(good)).unwrap_or_default();
        HostSettings { hosts, ..settings }
    }

    /// What is wrong with these values beyond their types, as `key: why`.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(u) = &self.ssh_user {
            if !valid_user_name(u) {
                out.push(format!(
                    "ssh_user: {u:?} is not a valid user name: use lowercase letters, digits, '-' and '_', starting with a letter"
                ));
            }
        }
        if let Some(t) = &self.tailnet {
            if t.is_empty() || t.starts_with('.') || t.contains(char::is_whitespace) {
                out.push(format!("tailnet: {t:?} is not a domain name like \"example.ts.net\""));
            }
        }
        if let Some(dir) = &self.storage_dir {
            // libvirtd would resolve a relative path against its own working directory.
            if !dir.is_absolute() {
                out.push(format!(
                    "storage_dir: {:?} is relative: give an absolute path on the libvirt host, e.g. \"/var/lib/project-vm\"",
                    dir.display().to_string()
                ));
            }
        }
        match &self.network {
            Some(Network::User { ssh_port: 0 }) => {
                out.push("network.ssh_port: 0 is not a port: give the first port to forward, e.g. 22022".into())
            }
            Some(Network::Network { name }) if name.is_empty() || name.contains(['/', ' ']) => {
                out.push(format!("network.name: {name:?} is not a libvirt network name (see `virsh net-list --all`)"))
            }
            // Linux interface names: 1 to 15 characters, no '/', ':' or blanks.
            Some(Network::Bridge { name })
                if name.is_empty()
                    || name.len() > 15
                    || name.contains(['/', ':'])
                    || name.contains(char::is_whitespace) =>
            {
                out.push(format!(
                    "network.name: {name:?} is not a bridge interface name (1 to 15 characters, e.g. \"br0\")"
                ))
            }
            _ => {}
        }
        if let Some(pool) = &self.pool {
            let ok = !pool.is_empty()
                && pool.len() <= 64
                && pool.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                out.push(format!("pool: {pool:?} is not a valid pool name: use letters, digits, '-', '_' and '.'"));
            }
        }
        out.extend(self.feature_dir_problems());
        for (name, _) in self.images.iter().flatten() {
            if let Err(e) = crate::images::record::validate_name(name) {
                out.push(format!("images.{name}: {e}"));
            }
        }
        out
    }

    /// `feature_dirs`: absolute paths only (a relative one would depend on
    /// where project-vm runs).
    fn feature_dir_problems(&self) -> Vec<String> {
        let relative = self.feature_dirs.iter().flatten().enumerate().filter(|(_, d)| !d.is_absolute());
        relative
            .map(|(i, dir)| {
                format!(
                    "feature_dirs[{i}]: {:?} is relative: give an absolute path, e.g. \"/etc/project-vm/features\"",
                    dir.display().to_string()
                )
            })
            .collect()
    }

    /// Loads the settings file(s). An explicit path must exist; the default
    /// locations are optional.
    pub fn load(explicit: Option<&Path>) -> anyhow::Result<HostSettings> {
        if let Some(path) = explicit {
            let text = crate::files::read_text(path, "settings file", crate::files::CONFIG_MAX)?;
            return Self::from_json(&text, &path.display().to_string());
        }
        let mut settings = HostSettings::default();
        for path in default_paths() {
            match path.try_exists() {
                Ok(false) => {}
                Ok(true) => {
                    let text = crate::files::read_text(&path, "settings file", crate::files::CONFIG_MAX)?;
                    tracing::debug!(path = %path.display(), "reading settings");
                    let mut file = Self::from_json(&text, &path.display().to_string())?;
                    if path == Path::new(SYSTEM_CONFIG) {
                        file.from_system_file =
                            SystemKeys { storage_dir: file.storage_dir.is_some(), network: file.network.is_some() };
                    }
                    settings = settings.overlay(file);
                }
                Err(e) => {
                    return Err(ConfigError::invalid(format!("cannot read settings file {}: {e}", path.display())))
                }
            }
        }
        Ok(settings)
    }

    /// The settings with the system daemon's defaults filled in (see
    /// [`HostSettings::resolve_for`]).
    pub fn resolve(self) -> anyhow::Result<Settings> {
        self.resolve_for(&Daemon::System)
    }

    /// The settings with defaults filled in for the daemon they are used on;
    /// every problem reported at once.
    ///
    /// The system daemon: disks in `/var/lib/project-vm`, libvirt's `default`
    /// network. A session daemon (it and its VMs run as one user, who can
    /// write only their own files and has no libvirt networks): disks in that
    /// user's data directory, user networking. The pool's name stays
    /// `project-vm` on both: pools are named per daemon, and every user's
    /// session is a daemon of its own, so one user's pool can never meet
    /// another's (nor the system daemon's).
    pub fn resolve_for(mut self, daemon: &Daemon) -> anyhow::Result<Settings> {
        if daemon.is_session() {
            // The system file's directory and network are the system daemon's.
            if self.from_system_file.storage_dir {
                self.storage_dir = None;
            }
            if self.from_system_file.network {
                self.network = None;
            }
        }
        let problems = self.problems();
        if !problems.is_empty() {
            return Err(ConfigError::invalid(format!("settings: {}", problems.join("; "))));
        }
        let ssh_user = self.ssh_user.unwrap_or_else(|| "dev".into());
        let pool = self.pool.unwrap_or_else(|| DEFAULT_POOL.into());
        let network = self.network.unwrap_or_else(|| match daemon {
            Daemon::System => Network::default(),
            Daemon::Session { .. } => Network::User { ssh_port: DEFAULT_SSH_PORT },
        });
        Ok(Settings {
            storage_dir: self.storage_dir.or_else(|| daemon.default_storage_dir()),
            pool,
            base_image: self.base_image.unwrap_or_else(|| DEFAULT_IMAGE.into()),
            images: self.images.unwrap_or_default(),
            accel: self.accel.unwrap_or_default(),
            network,
            daemon: daemon.clone(),
            ssh_user,
            ssh_authorized_keys: self.ssh_authorized_keys,
            tailnet: self.tailnet,
            tailscale_auth_key_file: self.tailscale_auth_key_file,
        })
    }
}

/// `hosts`: `{"NAME": {"uri": "qemu+ssh://...", SETTINGS...}}`; problems
/// are named by their path (`hosts.gpu.pool: ...`).
fn parse_hosts(v: &serde_json::Value, problems: &mut Vec<String>) -> BTreeMap<String, HostEntry> {
    let mut out = BTreeMap::new();
    let Some(obj) = v.as_object() else {
        problems.push("hosts: expected an object of hosts by name, each {\"uri\": ...}".into());
        return out;
    };
    for (name, entry) in obj {
        let at = format!("hosts.{name}");
        if !valid_host_name(name) {
            problems.push(format!("{at}: {name:?} is not a host name: use letters, digits, '-' and '_'"));
        }
        let Some(e) = entry.as_object() else {
            problems.push(format!("{at}: expected an object like {{\"uri\": \"qemu+ssh://root@host/system\"}}"));
            continue;
        };
        let uri = match e.get("uri") {
            Some(serde_json::Value::String(u)) if !u.trim().is_empty() => {
                if let Err(why) = crate::libvirt::uri::check(u) {
                    problems.push(format!("{at}.uri: {why}"));
                }
                u.clone()
            }
            Some(_) => {
                problems.push(format!("{at}.uri: expected a libvirt URI like \"qemu+ssh://root@host/system\""));
                String::new()
            }
            None => {
                problems.push(format!(
                    "{at}: no \"uri\": say which libvirt this host is, e.g. \"qemu+ssh://root@host/system\""
                ));
                String::new()
            }
        };
        // Features are read where project-vm runs, the same for every host.
        let keys: Vec<&str> = HOST_SETTING_KEYS
            .iter()
            .copied()
            .filter(|k| *k != "hosts" && *k != "feature_dirs")
            .chain(["uri"])
            .collect();
        for k in e.keys().filter(|k| !keys.contains(&k.as_str())) {
            problems.push(format!(
                "{at}.{k}: not a host setting{}; a host has \"uri\" and the settings that differ there",
                crate::suggest::did_you_mean(k, &keys)
            ));
        }
        let mut mine = Vec::new();
        let settings = HostSettings::from_keys(e, &mut mine);
        mine.extend(settings.problems());
        problems.extend(mine.into_iter().map(|p| format!("{at}.{p}")));
        out.insert(name.clone(), HostEntry { uri, settings });
    }
    out
}

fn valid_host_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

fn valid_user_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some('a'..='z' | '_'))
        && s.len() <= 32
        && c.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-' | '_'))
}

fn default_paths() -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from(SYSTEM_CONFIG)];
    if let Some(dir) = crate::paths::config_home() {
        paths.push(dir.join("project-vm/config.json"));
    }
    paths
}

/// Resolved host settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The pool's directory on the libvirt host. `None`: not set, and no
    /// default is known (a session daemon on another host: its user's home
    /// is not ours to know); see [`Settings::storage_dir`].
    pub storage_dir: Option<PathBuf>,
    pub pool: String,
    /// An image name (pulled from the catalog on first use) or an image file.
    pub base_image: String,
    pub images: BTreeMap<String, ImageSource>,
    pub accel: Accel,
    pub network: Network,
    pub ssh_user: String,
    /// `None`: use the invoking user's `~/.ssh/*.pub`.
    pub ssh_authorized_keys: Option<Vec<String>>,
    pub tailnet: Option<String>,
    pub tailscale_auth_key_file: Option<PathBuf>,
    /// The daemon these settings were resolved for.
    pub daemon: Daemon,
}

impl Settings {
    /// What these settings give every VM made on their host, for
    /// [`crate::spec::VmSpec::resolve`]; `keys`: [`Settings::authorized_keys`], read once.
    pub fn host<'a>(&'a self, keys: &'a [String]) -> crate::spec::Host<'a> {
        crate::spec::Host {
            accel: self.accel,
            network: &self.network,
            ssh_user: &self.ssh_user,
            authorized_keys: keys,
            tailnet: self.tailnet.as_deref(),
            tailscale: self.tailscale_auth_key_file.is_some(),
        }
    }

    /// The pool's directory, or why there is none to use.
    pub fn storage_dir(&self) -> anyhow::Result<&Path> {
        self.storage_dir.as_deref().ok_or_else(|| {
            ConfigError::invalid(
                "\"storage_dir\" is not set, and for a session daemon on another host project-vm cannot know its user's home: \
                 set \"storage_dir\" to a directory that user can write there, e.g. \"/home/USER/.local/share/project-vm\"",
            )
        })
    }

    /// The public keys to authorize in the guest. With none configured, the
    /// invoking user's `~/.ssh/*.pub` (under sudo, the user who ran sudo).
    pub fn authorized_keys(&self) -> anyhow::Result<Vec<String>> {
        if let Some(keys) = &self.ssh_authorized_keys {
            check_public_keys(keys)?;
            return Ok(keys.clone());
        }
        let home = invoking_home().context("cannot find the invoking user's home directory for ~/.ssh/*.pub")?;
        let dir = home.join(".ssh");
        // Read with the invoking user's rights (under sudo), and every line
        // must be a public key: nothing else in that directory, nor a file a
        // link there points at, reaches a guest. A bad line is named by file
        // and line, never quoted.
        let keys = as_invoking_user(|| {
            let mut keys = Vec::new();
            if let Ok(entries) = std::fs::read_dir(&dir) {
                let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
                paths.sort();
                for p in paths.into_iter().filter(|p| p.extension().is_some_and(|e| e == "pub")) {
                    let text = crate::files::read_text(&p, "ssh public key", crate::files::KEY_MAX)?;
                    for (n, line) in text.lines().enumerate() {
                        let line = line.trim();
                        if line.is_empty() || line.starts_with('#') {
                            continue;
                        }
                        if check_public_keys(&[line.to_owned()]).is_err() {
                            return Err(ConfigError::invalid(format!(
                                "{} line {}: not an OpenSSH public key: fix or remove it, or set \"ssh_authorized_keys\" in the settings file",
                                p.display(),
                                n + 1
                            )));
                        }
                        keys.push(line.to_owned());
                    }
                }
            }
            Ok(keys)
        })?;
        if keys.is_empty() {
            return Err(ConfigError::invalid(format!(
                "no ssh public key in {}/*.pub and ssh_authorized_keys is not set: create a key with `ssh-keygen -t ed25519` or set \"ssh_authorized_keys\" in the settings file",
                dir.display()
            )));
        }
        Ok(keys)
    }
}

/// `ssh_authorized_keys` must let someone in: at least one key, each an
/// OpenSSH public key line (`TYPE BASE64 [COMMENT]`).
pub fn check_public_keys(keys: &[String]) -> anyhow::Result<()> {
    if keys.is_empty() {
        return Err(ConfigError::invalid(
            "ssh_authorized_keys is empty: nobody could log in to the VM; give at least one public key, or leave the key out to use your ~/.ssh/*.pub",
        ));
    }
    for (i, key) in keys.iter().enumerate() {
        let parsed = match ssh_key::PublicKey::from_openssh(key.trim()) {
            // Algorithms this build does not decode (ECDSA): the line's shape
            // and its blob's own algorithm name still have to agree.
            Err(ssh_key::Error::AlgorithmUnknown) => blob_names_its_type(key.trim()).map_err(str::to_owned),
            other => other.map(|_| ()).map_err(|e| e.to_string()),
        };
        if let Err(why) = parsed {
            let shown: String = key.chars().take(40).collect();
            return Err(ConfigError::invalid(format!(
                "ssh_authorized_keys[{i}]: {shown:?} is not an OpenSSH public key ({why}): give a line like those in ~/.ssh/id_ed25519.pub"
            )));
        }
    }
    Ok(())
}

/// `TYPE BASE64 [COMMENT]` whose base64 blob starts with the SSH string TYPE.
fn blob_names_its_type(line: &str) -> Result<(), &'static str> {
    let mut words = line.split_whitespace();
    let (Some(kind), Some(blob)) = (words.next(), words.next()) else { return Err("expected TYPE BASE64") };
    let mut bytes = Vec::with_capacity(blob.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in blob.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err("the key is not base64"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push((acc >> bits) as u8);
        }
    }
    // The blob is a run of length-prefixed strings that ends exactly where it
    // does: the type, then the key's own fields (for ECDSA: curve, point).
    let mut fields = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let len = rest.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
        let Some(field) = len.and_then(|n| rest.get(4..4 + n)) else {
            return Err("the key's data does not match its type");
        };
        fields.push(field);
        rest = &rest[4 + field.len()..];
    }
    match fields.first() {
        Some(name) if *name == kind.as_bytes() && fields.len() >= 2 => Ok(()),
        _ => Err("the key's data does not match its type"),
    }
}

/// Home of the user who invoked us; under sudo, of the user who ran sudo.
pub fn invoking_home() -> Option<PathBuf> {
    if nix::unistd::geteuid().is_root() {
        if let Ok(name) = std::env::var("SUDO_USER") {
            if let Ok(Some(user)) = nix::unistd::User::from_name(&name) {
                return Some(user.dir);
            }
        }
    }
    std::env::var_os("HOME").map(PathBuf::from).or_else(|| {
        // No HOME (a bare `env -i`): the passwd entry's, never a shared directory.
        nix::unistd::User::from_uid(nix::unistd::geteuid()).ok().flatten().map(|u| u.dir)
    })
}

/// Under sudo, hands `path` (and the directories above it, up to the
/// invoking user's home, that root created) to the user who ran sudo, so
/// project-vm never leaves root-owned files in someone's home.
/// Runs `f` with the file-system rights of the user who ran `sudo` (a plain
/// run, or root's own, runs it as is). Files project-vm keeps in that user's
/// home (the pinned `known_hosts`) and the keys it reads there (`~/.ssh/*.pub`)
/// are reached as that user would reach them: a symlink the user planted
/// can point only at what the user may read or write, and what is made
/// belongs to the user. `f` runs on a thread of its own whose file-system ids
/// and groups are the user's (Linux keeps them per thread: the rest of the
/// process stays root); the thread ends with `f`.
pub fn as_invoking_user<T: Send>(f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    let Some(user) = sudo_user() else { return f() };
    let name = user.name.clone();
    // A thread of its own, not a fan-out: the credentials below are the
    // thread's, so it must be a fresh thread that ends with `f` (a pooled
    // worker would keep the user's rights for whatever it runs next).
    std::thread::scope(|s| {
        s.spawn(move || {
            let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
            let groups = [gid];
            // SAFETY: raw syscalls change only this thread's credentials (the
            // C library's wrappers would change every thread's).
            let ok = unsafe {
                nix::libc::syscall(nix::libc::SYS_setgroups, 1, groups.as_ptr()) == 0
                    && {
                        nix::libc::syscall(nix::libc::SYS_setfsgid, gid);
                        nix::libc::syscall(nix::libc::SYS_setfsgid, u32::MAX) == gid as i64
                    }
                    && {
                        nix::libc::syscall(nix::libc::SYS_setfsuid, uid);
                        nix::libc::syscall(nix::libc::SYS_setfsuid, u32::MAX) == uid as i64
                    }
            };
            if !ok {
                return Err(ConfigError::Environment(format!(
                    "cannot take {}'s file-system rights to reach files in their home",
                    user.name
                ))
                .into());
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("a worker reaching {name}'s files panicked")))
    })
}

/// Under `sudo` as root: the user who ran it (not root itself).
fn sudo_user() -> Option<nix::unistd::User> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name(&std::env::var("SUDO_USER").ok()?).ok()??;
    (!user.uid.is_root()).then_some(user)
}

pub fn give_to_invoking_user(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let Some(user) = std::env::var("SUDO_USER").ok().and_then(|n| nix::unistd::User::from_name(&n).ok().flatten())
    else {
        return;
    };
    if !path.starts_with(&user.dir) {
        return;
    }
    let mut p = Some(path);
    while let Some(cur) = p {
        if cur == user.dir {
            break;
        }
        // Never through a symlink: a link the user planted must not hand
        // them whatever it points at.
        // Nor a second name of another file (a hard link the user made to
        // one of root's, where the kernel allows that).
        if std::fs::symlink_metadata(cur)
            .is_ok_and(|m| m.uid() == 0 && !m.file_type().is_symlink() && (m.is_dir() || m.nlink() == 1))
        {
            if let Err(e) = nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                cur,
                Some(user.uid),
                Some(user.gid),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                crate::messages::warn(format!("cannot hand {} to {}: {e}", cur.display(), user.name));
            }
        }
        p = cur.parent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let s = HostSettings::default().resolve().unwrap();
        assert_eq!(s.pool, "project-vm");
        assert_eq!(s.storage_dir, Some(PathBuf::from("/var/lib/project-vm")));
        assert_eq!(s.accel, Accel::Kvm);
        assert_eq!(s.network, Network::Network { name: "default".into() });
        assert_eq!(s.ssh_user, "dev");
    }

    #[test]
    fn a_session_daemon_defaults_to_its_users_home_and_user_networking() {
        use crate::libvirt::daemon::DaemonUser;
        let alice = DaemonUser { uid: 4242, gid: 4242, name: "alice".into(), home: "/home/alice".into(), is_me: false };
        let session = Daemon::Session { user: Some(alice) };
        let s = HostSettings::default().resolve_for(&session).unwrap();
        assert_eq!(s.storage_dir, Some(PathBuf::from("/home/alice/.local/share/project-vm")));
        assert_eq!(s.network, Network::User { ssh_port: DEFAULT_SSH_PORT });
        // The same pool name as on the system daemon: pools are per daemon.
        assert_eq!((s.pool.as_str(), s.accel), ("project-vm", Accel::Kvm));
        // What is set wins.
        let set = HostSettings {
            storage_dir: Some("/srv/vms".into()),
            network: Some(Network::Bridge { name: "br0".into() }),
            ..Default::default()
        };
        let s = set.resolve_for(&session).unwrap();
        assert_eq!((s.storage_dir, s.network), (Some("/srv/vms".into()), Network::Bridge { name: "br0".into() }));
        // The system settings file's directory and network are the system
        // daemon's (a NixOS host writes them for it): a session keeps its own.
        let system_file = HostSettings {
            storage_dir: Some("/var/lib/project-vm".into()),
            network: Some(Network::default()),
            accel: Some(Accel::Tcg),
            from_system_file: SystemKeys { storage_dir: true, network: true },
            ..Default::default()
        };
        let s = system_file.clone().resolve_for(&session).unwrap();
        assert_eq!(s.storage_dir, Some(PathBuf::from("/home/alice/.local/share/project-vm")));
        assert_eq!((s.network, s.accel), (Network::User { ssh_port: DEFAULT_SSH_PORT }, Accel::Tcg));
        assert_eq!(system_file.clone().resolve().unwrap().storage_dir, Some("/var/lib/project-vm".into()));
        // The user's own file wins, also for a session.
        let mine = HostSettings { storage_dir: Some("/srv/alice".into()), ..Default::default() };
        let s = system_file.overlay(mine).resolve_for(&session).unwrap();
        assert_eq!(s.storage_dir, Some("/srv/alice".into()));
        // A remote session: no default directory, and saying so names the setting.
        let s = HostSettings::default().resolve_for(&Daemon::Session { user: None }).unwrap();
        let e = s.storage_dir().unwrap_err();
        assert_eq!(crate::exit::code(&e), 2);
        assert!(e.to_string().contains("storage_dir"), "{e}");
    }

    #[test]
    fn parse_and_overlay() {
        let sys =
            HostSettings::from_json(r#"{"pool":"a","accel":"tcg","network":{"type":"user","ssh_port":22022}}"#, "sys")
                .unwrap();
        let user = HostSettings::from_json(r#"{"pool":"b","tailnet":"example.ts.net"}"#, "user").unwrap();
        let s = sys.overlay(user).resolve().unwrap();
        assert_eq!(s.pool, "b");
        assert_eq!(s.accel, Accel::Tcg);
        assert_eq!(s.network, Network::User { ssh_port: 22022 });
        assert_eq!(s.tailnet.as_deref(), Some("example.ts.net"));
    }

    #[test]
    fn bad_settings_are_named() {
        let e = HostSettings::from_json(r#"{"pol":"x"}"#, "cfg.json").unwrap_err().to_string();
        assert!(e.contains("cfg.json") && e.contains("pol: unknown setting (did you mean \"pool\"?)"), "{e}");
        // Every problem of a file at once, duplicates refused.
        let e = HostSettings::from_json(
            r#"{"accel":"hvf","storage_dir":"rel","ssh_user":"Root","network":{"type":"user","ssh_port":0}}"#,
            "all.json",
        )
        .unwrap_err();
        let Some(ConfigError::File { origin, problems }) = e.downcast_ref::<ConfigError>() else { panic!("{e:?}") };
        assert_eq!((origin.as_str(), problems.len()), ("all.json", 4), "{problems:?}");
        for (got, want) in problems.iter().zip(["accel:", "network.ssh_port:", "ssh_user:", "storage_dir:"]) {
            assert!(got.starts_with(want), "{want} is not the start of {got}");
        }
        let e = e.to_string();
        assert!(e.starts_with("all.json: 4 problems; nothing was changed:"), "{e}");
        let e = HostSettings::from_json(r#"{"network":{"type":"bridge","name":"a very long bridge"}}"#, "b.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a bridge interface name"), "{e}");
        let e = HostSettings::from_json(r#"{"pool":"a","pool":"b"}"#, "dup.json").unwrap_err().to_string();
        assert!(e.contains("written twice") && e.contains("pool"), "{e}");
        let e = HostSettings::from_json(r#"{"accel":"hvf"}"#, "cfg.json").unwrap_err().to_string();
        assert!(e.contains("hvf"), "{e}");
        let e = HostSettings::from_json(r#"{"network":{"type":"bridge"}}"#, "c").unwrap_err().to_string();
        assert!(e.contains("name"), "{e}");
        let e = HostSettings { ssh_user: Some("Root".into()), ..Default::default() }.resolve().unwrap_err();
        assert!(e.to_string().contains("ssh_user"));
        let e = HostSettings { storage_dir: Some("pool".into()), ..Default::default() }.resolve().unwrap_err();
        assert!(e.to_string().contains("relative"), "{e}");
        let e =
            HostSettings { network: Some(Network::User { ssh_port: 0 }), ..Default::default() }.resolve().unwrap_err();
        assert!(e.to_string().contains("ssh_port: 0"), "{e}");
    }

    #[test]
    fn hosts_overlay_the_common_settings_and_report_every_problem() {
        let s = HostSettings::from_json(
            r#"{"pool": "common", "hosts": {"ws": {"uri": "qemu:///system"}, "gpu": {"uri": "qemu:///session", "pool": "gpu"}}}"#,
            "t",
        )
        .unwrap();
        let hosts = s.hosts.clone().unwrap();
        assert_eq!(hosts["gpu"].uri, "qemu:///session");
        assert_eq!(s.clone().overlay(hosts["gpu"].settings.clone()).resolve().unwrap().pool, "gpu");
        assert_eq!(s.clone().overlay(hosts["ws"].settings.clone()).resolve().unwrap().pool, "common");
        let e = HostSettings::from_json(
            r#"{"hosts": {"a b": {"uri": "x"}, "gpu": {"pool": "bad name", "uir": "x"}, "c": 5}}"#,
            "t",
        )
        .unwrap_err()
        .to_string();
        for want in [
            "hosts.a b: \"a b\" is not a host name",
            "hosts.gpu: no \"uri\"",
            "hosts.gpu.pool:",
            "hosts.gpu.uir: not a host setting (did you mean \"uri\"?)",
            "hosts.c: expected an object",
        ] {
            assert!(e.contains(want), "{want:?} not in {e}");
        }
    }

    #[test]
    fn authorized_keys_must_be_public_keys() {
        let keys = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for good in ["ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQC9cXOCxK/5L+7FvkZ7uHvVMEWBNqKGRc84oQMdbpitTaqgJprKNzj8O58Z5PRxvM3WEW4lvPtfXILa9Yypo5WW/X4B6lgWiNG56gc9734zXDgYrk/tvy9Xj530WJQG7zXHzgg1vcESG4vrwWiFZUBI8X7zLFUjq1o7fXv5h0zI3BFDoI+bG+Jmewn5sQxq4ik52kTHsGLVTHDtj8vMW8HrHYM1bWty1d/1pt12BLVbV2nr/kK9UrZhhxVOdrraUhtHgWbHkGrALuSHuy78lvrKNrnClzyF7asnPxfPgRb6JWP3KozfZCT7N87IeesHh6TZz+Bvc1TY19v+UiEiIKLlHZaJjC7qTOXmCWjgaZCS3zMdrdQpStnsdQku+u15+GRRM3BJXDtVJQtw+tvbqS99AbdNCYk7zyx2npRwBPxD3YoB1JA/y8sMg7bYvelBSCrtDab6qPUJUS+piLKn9fUJ69eTUnncOzC+Y+K+ssX4x1v9+KkLOccm2NiUe7efR48= root@vm", "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBJ96oQfP14v1kSE8KORhvZGiRHL9dScb6l750kP3WOefhBWlLr8YMiX1Z0I6U+rPALBd61jFcq+LhzlULbr+eT4= root@vm", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILQyz10G13SCStbKhpI5cg+ZzEPLvSCEZwuwLmszAU7E root@vm"] {
            check_public_keys(&keys(&[good])).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for (bad, says) in [
            (keys(&[]), "is empty"),
            (keys(&["not a key"]), "ssh_authorized_keys[0]"),
            (keys(&["ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAy"]), "does not match"),
            (keys(&["ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABB"]), "does not match"),
            (
                keys(&[
                    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILQyz10G13SCStbKhpI5cg+ZzEPLvSCEZwuwLmszAU7E root@vm",
                    "ssh-ed25519 AAAA",
                ]),
                "ssh_authorized_keys[1]",
            ),
        ] {
            let e = check_public_keys(&bad).unwrap_err();
            assert_eq!(crate::exit::code(&e), 2);
            assert!(e.to_string().contains(says), "{e}");
        }
    }

    #[test]
    fn keys_listed_match_struct() {
        let json = serde_json::to_value(HostSettings {
            storage_dir: Some("/x".into()),
            pool: Some("p".into()),
            base_image: Some("b".into()),
            accel: Some(Accel::Tcg),
            network: Some(Network::default()),
            ssh_user: Some("u".into()),
            ssh_authorized_keys: Some(vec![]),
            tailnet: Some("t".into()),
            tailscale_auth_key_file: Some("/k".into()),
            images: Some(BTreeMap::new()),
            feature_dirs: Some(vec![]),
            hosts: None,
            from_system_file: SystemKeys::default(),
        })
        .unwrap();
        // `hosts` is parsed by hand (see parse_hosts), not by serde.
        let mut keys: Vec<_> = json.as_object().unwrap().keys().cloned().chain(["hosts".to_string()]).collect();
        keys.sort();
        let mut listed: Vec<_> = HOST_SETTING_KEYS.iter().map(|s| s.to_string()).collect();
        listed.sort();
        assert_eq!(keys, listed);
    }
}
