//! `ssh` and `ssh-config`: ssh with the guest's host key pinned.
//!
//! The host key was generated at create and recorded in the VM's metadata. It
//! is written to a known_hosts file project-vm manages, under the alias
//! `project-NAME`, and ssh runs with `StrictHostKeyChecking=yes` and
//! `HostKeyAlias=project-NAME`: the same pinned key verifies the tailnet name,
//! an IP address or the loopback forward, and nothing is trusted on first use.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use std::io::Write;

use anyhow::Context;
use serde::Serialize;

use super::addresses::{self, SshTarget};
use super::{Ctx, Error};
use crate::libvirt::vms::Vm;
use crate::output::Report;

/// `$XDG_STATE_HOME/project-vm/known_hosts` (default `~/.local/state/...`).
pub fn known_hosts_path() -> PathBuf {
    let state = crate::paths::state_home_in(crate::settings::invoking_home().as_deref())
        .unwrap_or_else(|| PathBuf::from("/var/lib/project-vm"));
    state.join("project-vm/known_hosts")
}

/// Replaces the line for `alias` in the known_hosts file with `key`.
pub fn pin_host_key(path: &Path, alias: &str, key: &str) -> anyhow::Result<()> {
    rewrite_known_hosts(path, alias, Some(key))
}

/// Removes `alias`'s line (`destroy`: a later VM of that name has a new key).
pub fn forget_host_key(path: &Path, alias: &str) -> anyhow::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    rewrite_known_hosts(path, alias, None)
}

fn rewrite_known_hosts(path: &Path, alias: &str, key: Option<&str>) -> anyhow::Result<()> {
    // One writer at a time (apply pins and forgets keys from parallel jobs):
    // each rewrite reads what the last one wrote.
    let _lock =
        crate::lock::acquire("local", &format!("known-hosts:{}", path.display()), "updating known_hosts", |_| {})?;
    // Under sudo the file is the invoking user's: read and written with their
    // rights only, so a link they planted (at the file, or at a temporary
    // name) reaches nothing they could not reach themselves.
    // What an earlier root run left root's in the user's home becomes the
    // user's first (never through a link), so the user can rewrite it.
    crate::settings::give_to_invoking_user(path);
    // Made with the user's file-system ids, what it writes is the user's already.
    crate::settings::as_invoking_user(|| write_known_hosts(path, alias, key))
}

fn write_known_hosts(path: &Path, alias: &str, key: Option<&str>) -> anyhow::Result<()> {
    use std::io::Write;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(Error::Environment(format!(
            "{} is a symbolic link: project-vm keeps its pinned host keys in a file of its own; remove the link",
            path.display()
        ))
        .into());
    }
    let existing = match path.try_exists() {
        Ok(true) => crate::files::read_text(path, "known_hosts file", crate::files::CONFIG_MAX)?,
        _ => String::new(),
    };
    let mut lines: Vec<String> = existing.lines().filter(|l| !is_alias_line(l, alias)).map(String::from).collect();
    if let Some(key) = key {
        lines.push(known_hosts_line(alias, key)?);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A new file of an unguessable name, never through a link.
    let tmp = path.with_extension(format!("tmp.{}.{}", std::process::id(), uuid::Uuid::new_v4().simple()));
    let text = if lines.is_empty() { String::new() } else { lines.join("\n") + "\n" };
    let mut f = crate::files::create_new_private(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// True when `line` is the known_hosts entry project-vm wrote for `alias`
/// (read by ssh-key's known_hosts parser: no marker, the one host pattern
/// `alias`). A line for `alias` the parser cannot read (a damaged key) is
/// ours too, to be replaced; markers, hashed names, comments and other
/// hosts' lines are kept as they are.
fn is_alias_line(line: &str, alias: &str) -> bool {
    use ssh_key::known_hosts::{Entry, HostPatterns};
    match line.trim_start().parse::<Entry>() {
        Ok(e) => e.marker().is_none() && matches!(e.host_patterns(), HostPatterns::Patterns(p) if p == &[alias]),
        Err(_) => line.split_whitespace().next() == Some(alias),
    }
}

/// The known_hosts line pinning `key` (an OpenSSH public key, its comment
/// left out) for `alias`. A key of a type ssh-key reads (ed25519, the type
/// create makes) whose data is not a key is refused, never written; one of
/// a type it does not know (this build reads no RSA nor ECDSA) is written
/// as its type and data, unread, as before.
fn known_hosts_line(alias: &str, key: &str) -> anyhow::Result<String> {
    let refused = |e: ssh_key::Error| {
        Error::Invalid(format!("the host key recorded for {alias} is not an OpenSSH public key ({e})"))
    };
    let fields: Vec<&str> = key.split_whitespace().take(2).collect();
    match ssh_key::PublicKey::from_openssh(key.trim()) {
        Ok(mut key) => {
            key.set_comment("");
            Ok(format!("{alias} {}", key.to_openssh().map_err(refused)?.trim_end()))
        }
        Err(ssh_key::Error::AlgorithmUnknown | ssh_key::Error::AlgorithmUnsupported { .. }) if fields.len() == 2 => {
            Ok(format!("{alias} {}", fields.join(" ")))
        }
        Err(e) => Err(refused(e).into()),
    }
}

/// For a libvirt URI over ssh (`qemu+ssh://[user@]host[:port]/...`), the
/// `ProxyCommand` that reaches the libvirt host the way libvirt does: its
/// `command` (default `ssh`), `keyfile` and `known_hosts` parameters, port
/// and user. Through it, ssh reaches user networking's forward, which listens
/// on that host's loopback. `None` for other transports.
pub fn proxy_command(uri: &str) -> Option<String> {
    let u = crate::libvirt::uri::Uri::parse(uri).ok()?;
    if !u.is_ssh() {
        return None;
    }
    let param = |key: &str| u.param(key).map(str::to_owned);
    let (user, port) = (u.user.as_deref(), u.port.map(|p| p.to_string()));
    let host = u.host.as_deref().filter(|h| !h.is_empty())?;
    let mut args = vec![param("command").unwrap_or_else(|| "ssh".into())];
    if let Some(k) = param("keyfile") {
        args.extend(["-i".into(), k]);
    }
    if let Some(kh) = param("known_hosts") {
        args.extend(["-o".into(), format!("UserKnownHostsFile={kh}")]);
    }
    if let Some(p) = port {
        args.extend(["-p".into(), p]);
    }
    if let Some(u) = user {
        args.extend(["-l".into(), u.into()]);
    }
    args.extend(["-W".into(), "%h:%p".into(), host.into()]);
    // ssh runs it with the shell, and expands %-tokens first: every `%` but
    // those of the `-W %h:%p` placeholder is doubled.
    let quoted = args.iter().map(|a| match a.as_str() {
        "%h:%p" => a.clone(),
        _ => shell_quote(&a.replace('%', "%%")),
    });
    Some(quoted.collect::<Vec<_>>().join(" "))
}

/// One word for `sh`, quoted only when it needs it (shell-words' POSIX quoting).
fn shell_quote(s: &str) -> String {
    shell_words::quote(s).into_owned()
}

/// The target and the ssh options that pin the host key. `ctx`: the VM's
/// libvirt host. A loopback forward on a remote host is reached through it
/// ([`proxy_command`]) when libvirt is reached over ssh.
pub fn prepare(ctx: &Ctx, vm: &Vm) -> anyhow::Result<(SshTarget, Vec<String>)> {
    let uri = ctx.uri.as_str();
    let spec = vm.spec()?;
    let state = vm.state();
    let target = addresses::ssh_target_of(vm, &spec, state)
        .ok_or_else(|| Error::NoAddress { vm: vm.name.to_string(), state: state.as_str().to_owned() })?;
    let alias = ctx.ssh_alias(&vm.name);
    let mut opts = vec![format!("HostKeyAlias={alias}")];
    if target.via == "forward" && !super::Ctx::uri_is_local(uri) {
        match proxy_command(uri) {
            Some(proxy) => opts.push(format!("ProxyCommand={proxy}")),
            None => {
                return Err(Error::Environment(format!(
                    "{}'s ssh forward listens on the loopback of its libvirt host ({uri}), which ssh can reach only through that host: connect to libvirt over qemu+ssh://, or give the VM a bridge or network, or a tailnet",
                    vm.name
                ))
                .into())
            }
        }
    }
    match &vm.own.host_key {
        Some(key) => {
            let kh = known_hosts_path();
            pin_host_key(&kh, &alias, key)?;
            opts.push("StrictHostKeyChecking=yes".into());
            opts.push(format!("UserKnownHostsFile={}", kh.display()));
        }
        None => {
            crate::messages::warn(format!("no pinned host key recorded for {}; ssh will use your known_hosts", vm.name))
        }
    }
    Ok((target, opts))
}

/// Replaces this process with ssh.
pub fn exec(ctx: &Ctx, vm: &Vm, identity: Option<&Path>, command: &[String]) -> anyhow::Result<()> {
    let (target, opts) = prepare(ctx, vm)?;
    let mut cmd = Command::new("ssh");
    for o in &opts {
        cmd.arg("-o").arg(o);
    }
    if let Some(id) = identity {
        cmd.arg("-i").arg(id).arg("-o").arg("IdentitiesOnly=yes");
    }
    cmd.arg("-p").arg(target.port.to_string()).arg(format!("{}@{}", target.user, target.host));
    if !command.is_empty() {
        cmd.arg("--").args(command);
    }
    tracing::debug!(?cmd, "exec ssh");
    let err = cmd.exec();
    Err(Error::Environment(format!("cannot run ssh: {err}: install the OpenSSH client")).into())
}

/// `ssh-config`: one entry per VM (with its libvirt host); a VM without an
/// address is an entry with its error. For people, a block for
/// `~/.ssh/config` per VM (the error as a comment); with `--json`, the same
/// as fields.
#[derive(Debug, Serialize)]
pub struct SshConfigReport {
    pub vms: Vec<SshConfigEntry>,
}

#[derive(Debug, Serialize)]
pub struct SshConfigEntry {
    pub name: String,
    /// The `Host` alias the block defines (and the pinned key's alias).
    pub alias: String,
    /// The libvirt host the VM is on: the fleet host's name, else the URI.
    pub libvirt_host: String,
    /// What ssh connects to; `None` with `error`.
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    pub target: Option<SshConfigTarget>,
    /// Why there is no block (no address yet, say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SshConfigTarget {
    /// `HostName`.
    pub host: String,
    pub port: u16,
    pub user: String,
    /// How the address was found: `tailnet`, `lease`, `agent`, `arp` or `forward`.
    pub via: String,
    /// `IdentityFile` (`-i`, `PROJECT_VM_SSH_IDENTITY`), if one was given.
    pub identity: Option<PathBuf>,
    /// `ProxyCommand`: through the libvirt host, for a forward on a remote one.
    pub proxy_command: Option<String>,
    /// The known_hosts file holding the pinned host key (`None`: no key was recorded).
    pub known_hosts: Option<PathBuf>,
    /// Every ssh option the block sets, as `Key=value`, in order.
    pub options: Vec<String>,
}

pub fn config_report(vms: &[(std::sync::Arc<Ctx>, Vm)], identity: Option<&Path>) -> SshConfigReport {
    let vms = vms
        .iter()
        .map(|(ctx, vm)| {
            let (target, error) = match config_target(ctx, vm, identity) {
                Ok(t) => (Some(t), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            };
            SshConfigEntry {
                name: vm.name.to_string(),
                alias: ctx.ssh_alias(&vm.name),
                libvirt_host: ctx.host_name.clone().unwrap_or_else(|| ctx.uri.clone()),
                target,
                error,
            }
        })
        .collect();
    SshConfigReport { vms }
}

fn config_target(ctx: &Ctx, vm: &Vm, identity: Option<&Path>) -> anyhow::Result<SshConfigTarget> {
    let (target, mut options) = prepare(ctx, vm)?;
    if let Some(id) = identity {
        options.push(format!("IdentityFile={}", id.display()));
        options.push("IdentitiesOnly=yes".into());
    }
    let option = |key: &str| options.iter().find_map(|o| o.strip_prefix(key)?.strip_prefix('=').map(str::to_owned));
    Ok(SshConfigTarget {
        proxy_command: option("ProxyCommand"),
        known_hosts: option("UserKnownHostsFile").map(PathBuf::from),
        identity: identity.map(Path::to_path_buf),
        host: target.host,
        port: target.port,
        user: target.user,
        via: target.via,
        options,
    })
}

impl Report for SshConfigReport {
    fn human(&self, out: &mut dyn Write) -> std::io::Result<()> {
        for vm in &self.vms {
            match (&vm.target, &vm.error) {
                (Some(t), _) => writeln!(out, "{}", config_block(&vm.alias, t))?,
                (None, e) => writeln!(out, "# {}: {}", vm.name, e.as_deref().unwrap_or("no address"))?,
            }
        }
        Ok(())
    }
}

/// A block for `~/.ssh/config`.
fn config_block(alias: &str, t: &SshConfigTarget) -> String {
    let mut out = format!("Host {alias}\n  HostName {}\n  Port {}\n  User {}\n", t.host, t.port, t.user);
    for o in &t.options {
        let (k, v) = o.split_once('=').unwrap_or((o, ""));
        out.push_str(&format!("  {k} {v}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const A1: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIAuyqvaHvgZeTgzB+6Zz1KUJkpJUUMuGA8dXuEJQxDWX";
    const A2: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIDUxLEAIvVPZ8DzcDeUsDq4MkTDKjs/pzno8VlVxDMQn";
    const B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIEWm2o5qOxQlUxnV5NYDQDjSRD4Z0cK1G7FE5EsNbb8j";

    #[test]
    fn a_remote_forward_is_reached_through_the_libvirt_host_as_libvirt_reaches_it() {
        assert_eq!(proxy_command("qemu+ssh://root@gpu-box/system").unwrap(), "ssh -l root -W %h:%p gpu-box");
        assert_eq!(
            proxy_command("qemu+ssh://gpu-box:2222/system?keyfile=/k%20ey&known_hosts=/kh").unwrap(),
            "ssh -i '/k ey' -o 'UserKnownHostsFile=/kh' -p 2222 -W %h:%p gpu-box"
        );
        assert_eq!(
            proxy_command("qemu+ssh://root@127.0.0.1:22399/system?command=/tmp/x/ssh").unwrap(),
            "/tmp/x/ssh -p 22399 -l root -W %h:%p 127.0.0.1"
        );
        assert_eq!(proxy_command("qemu+ssh://[::1]:22/system").unwrap(), "ssh -p 22 -W %h:%p ::1");
        assert_eq!(proxy_command("qemu+tls://gpu-box/system"), None);
        assert_eq!(proxy_command("qemu:///system"), None);
    }

    fn entry(error: Option<&str>) -> SshConfigEntry {
        let target = SshConfigTarget {
            host: "127.0.0.1".into(),
            port: 22022,
            user: "dev".into(),
            via: "forward".into(),
            identity: Some("/k/id".into()),
            proxy_command: Some("ssh -l root -W %h:%p box".into()),
            known_hosts: Some("/s/known_hosts".into()),
            options: vec!["HostKeyAlias=project-a".into(), "ProxyCommand=ssh -l root -W %h:%p box".into()],
        };
        SshConfigEntry {
            name: "a".into(),
            alias: "project-a".into(),
            libvirt_host: "qemu+ssh://root@box/system".into(),
            target: error.is_none().then_some(target),
            error: error.map(String::from),
        }
    }

    #[test]
    fn ssh_config_json_is_fields_not_text() {
        let report = SshConfigReport { vms: vec![entry(None), entry(Some("no address known for a"))] };
        let v = serde_json::to_value(&report).unwrap();
        let a = &v["vms"][0];
        assert_eq!(a["alias"], "project-a");
        assert_eq!(a["host"], "127.0.0.1");
        assert_eq!(a["port"], 22022);
        assert_eq!(a["user"], "dev");
        assert_eq!(a["identity"], "/k/id");
        assert_eq!(a["proxy_command"], "ssh -l root -W %h:%p box");
        assert_eq!(a["known_hosts"], "/s/known_hosts");
        assert_eq!(a["libvirt_host"], "qemu+ssh://root@box/system");
        assert!(a.get("error").is_none(), "{a}");
        assert_eq!(v["vms"][1]["error"], "no address known for a");
        assert!(v["vms"][1].get("host").is_none());
        let mut text = Vec::new();
        report.human(&mut text).unwrap();
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "Host project-a\n  HostName 127.0.0.1\n  Port 22022\n  User dev\n  HostKeyAlias project-a\n  ProxyCommand ssh -l root -W %h:%p box\n\n# a: no address known for a\n"
        );
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_quote("/usr/bin/ssh"), "/usr/bin/ssh");
        assert_eq!(shell_quote("/k ey"), "'/k ey'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        let words = shell_words::split(&["a b", "c'd", "$x", ""].map(shell_quote).join(" ")).unwrap();
        assert_eq!(words, ["a b", "c'd", "$x", ""]);
    }

    #[test]
    fn parallel_pins_lose_no_update() {
        let dir = tempfile::tempdir().unwrap();
        let kh = dir.path().join("known_hosts");
        std::thread::scope(|s| {
            for i in 0..8 {
                let kh = &kh;
                s.spawn(move || pin_host_key(kh, &format!("project-v{i}"), &format!("ssh-ed25519 {A1} x")).unwrap());
            }
        });
        let text = std::fs::read_to_string(&kh).unwrap();
        assert_eq!(text.lines().count(), 8, "{text}");
    }

    #[test]
    fn forgetting_removes_only_that_alias() {
        let dir = tempfile::tempdir().unwrap();
        let kh = dir.path().join("known_hosts");
        pin_host_key(&kh, "project-a", &format!("ssh-ed25519 {A1} a")).unwrap();
        pin_host_key(&kh, "project-b", &format!("ssh-ed25519 {B} b")).unwrap();
        forget_host_key(&kh, "project-a").unwrap();
        assert_eq!(std::fs::read_to_string(&kh).unwrap(), format!("project-b ssh-ed25519 {B}\n"));
        forget_host_key(&dir.path().join("absent"), "project-a").unwrap();
        assert!(!dir.path().join("absent").exists());
    }

    #[test]
    fn pinning_replaces_only_that_alias() {
        let dir = tempfile::tempdir().unwrap();
        let kh = dir.path().join("state/known_hosts");
        pin_host_key(&kh, "project-a", &format!("ssh-ed25519 {A1} project-a")).unwrap();
        pin_host_key(&kh, "project-b", &format!("ssh-ed25519 {B} project-b")).unwrap();
        pin_host_key(&kh, "project-a", &format!("ssh-ed25519 {A2} project-a")).unwrap();
        let text = std::fs::read_to_string(&kh).unwrap();
        assert_eq!(text, format!("project-b ssh-ed25519 {B}\nproject-a ssh-ed25519 {A2}\n"));
    }

    #[test]
    fn a_rewrite_keeps_what_is_not_ours_and_refuses_a_key_that_is_not_one() {
        let dir = tempfile::tempdir().unwrap();
        let kh = dir.path().join("known_hosts");
        let theirs = format!(
            "# a comment\n@cert-authority project-a ssh-ed25519 {B}\nproject-a,other ssh-ed25519 {B}\nproject-ab ssh-ed25519 {B}\nproject-a garbage\n"
        );
        std::fs::write(&kh, &theirs).unwrap();
        pin_host_key(&kh, "project-a", &format!("ssh-ed25519 {A1} c")).unwrap();
        let text = std::fs::read_to_string(&kh).unwrap();
        // The damaged line for project-a is replaced; the rest stays as it was.
        let kept: String = theirs.lines().filter(|l| *l != "project-a garbage").map(|l| format!("{l}\n")).collect();
        assert_eq!(text, format!("{kept}project-a ssh-ed25519 {A1}\n"));
        // Other key types a VM's record could hold are read too.
        for other in ["ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBACcfEaJkHpKI85apGI48mUMl2ay//QtILhrfYKNmCI3vOK78t4H7mWZWZy2rabmEb6b0YpWoBWNYM2tKAbiwCo=", "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDhDLbS1+zrMOG1rFbNKqZPKbyEqbcnbYyvHticZ0Vp2Y4yNbYTmdMEgPTAo2sacxI9hq8GEsQcTl6FN3Ok6TNj7vUuGyFJlBSEcNHTSOeA1qK89IGUlqjkX1E9WFbCcl26u1AFeX+puyn9cP77KZqTx//KYa16jZV6znYVBIPY5w=="] {
            assert_eq!(known_hosts_line("project-x", other).unwrap(), format!("project-x {other}"));
        }
        let err = pin_host_key(&kh, "project-a", "ssh-ed25519 AAAA x").unwrap_err();
        assert!(matches!(err.downcast_ref::<Error>(), Some(Error::Invalid(_))), "{err:#}");
        assert_eq!(std::fs::read_to_string(&kh).unwrap(), text, "a refused key changed the file");
    }
}
