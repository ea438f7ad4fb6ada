//! `reconfigure NAME` (and `apply --reconfigure`): the VM's current
//! features, user data (and application script) applied again, in place,
//! keeping its identity: the pinned host key, the machine-id, the project
//! disk, the root disk and everything else on it.
//!
//! **How.** cloud-init applies a cloud-config once per instance, and
//! project-vm's guests trust their cached instance (`manual_cache_clean`),
//! so a new seed alone is never read. The guest is therefore made a new
//! instance of itself, and provisions again through the same path as its
//! first boot, reporting through the same readiness channel:
//! 1. **seed**: a new seed, with a new instance-id, uploaded and attached
//!    to the definition. Its cloud-config is the VM's as it is declared
//!    now, but for the host key: it carries none (the private key left the
//!    host with the first seed) and tells cloud-init to keep the key the
//!    guest has and make no other (`ssh_deletekeys: false`).
//! 2. **reset**: over ssh, verified against the pinned key, `cloud-init
//!    clean` drops the cached instance (not the machine-id, not the logs, not
//!    the host keys) and the reporter's first-boot mark goes, so the next
//!    boot reports as a provisioning boot.
//! 3. **reboot**: stopped and started (a power cycle: the seed is in the
//!    definition, not hot-plugged); cloud-init finds the seed, sees a new
//!    instance, and runs every per-instance module again.
//! 4. **wait**: the readiness report, as `--wait` gives it (exit 5 when
//!    cloud-init failed, 6 on timeout); the seed is removed as after a
//!    first boot; the record then says what went in (its features and the
//!    cloud-config's fingerprint), so `plan` shows no change any more.
//!
//! Re-run after a kill at any step converges: a seed left by a killed run is
//! removed first, a stopped VM is started (and waited for) first, and each
//! step does again what it did.
//!
//! Why not re-run cloud-init's modules over ssh without a reboot: the
//! modules of a running system race with what is running, the report
//! would not be the readiness report, and a kill mid-way would leave a
//! half-run instance; the reboot makes it the path every first boot takes.

use std::io::{self, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;

use super::create::CreateRequest;
use super::ready::{self, ReadyReport};
use super::{power, seed, Ctx, Error};
use crate::cloudinit::{self, SeedInput};
use crate::libvirt::metadata::Phase;
use crate::libvirt::vms::{self, State, Vm};
use crate::libvirt::{domain_xml, explain, storage};
use crate::output::Report;
use crate::progress::Progress;
use crate::spec::{Declaration, Devices, VmSpec};

/// What the guest is provisioned with again.
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    /// Feature snippets, merged before the user data.
    pub features: Vec<String>,
    /// The user's cloud-config, parsed, and as written.
    pub user_data: Option<(Value, String)>,
    /// The application script (run again, last) and the checks (the VM's
    /// recorded ones when none are given).
    pub provision: super::create::Provision,
}

impl Wanted {
    /// What a declaration asks for (`apply --reconfigure`).
    pub fn of(req: &CreateRequest) -> Wanted {
        Wanted { features: req.features.clone(), user_data: req.user_data.clone(), provision: req.provision.clone() }
    }
}

#[derive(Debug, Serialize)]
pub struct Reconfigured {
    pub name: String,
    /// The guest's new cloud-init instance.
    pub instance_id: String,
    pub ready: ReadyReport,
}

impl Reconfigured {
    /// Exit 5 or 6 as `--wait`: the guest did not come up clean.
    pub fn check(&self) -> anyhow::Result<()> {
        ready::check(&self.ready)
    }
}

impl Report for Reconfigured {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "reconfigured {} (cloud-init instance {})", self.name, self.instance_id)?;
        crate::messages::note(self.ready.note());
        Ok(())
    }
}

/// `reconfigure`: the four steps above, under the VM's lock.
pub fn reconfigure(
    ctx: &Ctx,
    vm: &Vm,
    wanted: &Wanted,
    identity: Option<&Path>,
    timeout: Duration,
    progress: &Progress,
) -> anyhow::Result<Reconfigured> {
    let _lock = super::vm_lock(ctx, &vm.name, "reconfiguring")?;
    check(vm)?;
    let user_config = crate::features::user_config(&wanted.features, wanted.user_data.as_ref().map(|(v, _)| v))?;
    let spec = desired(ctx, vm, wanted)?;
    let vm = up(ctx, vm, timeout, progress)?;
    let instance_id = new_seed(ctx, &vm, &spec, wanted, user_config.as_ref(), progress)?;
    reset(ctx, &vm, identity, progress)?;
    reboot(ctx, &vm, progress)?;
    let vm = vms::get(&ctx.conn(), &vm.name)?;
    let ready = ready::wait(ctx, &vm, timeout, progress)?;
    record(ctx, &vm, &spec)?;
    Ok(Reconfigured { name: vm.name.to_string(), instance_id, ready })
}

/// A whole VM with a pinned host key (what keeps its identity across the
/// new instance); bad input otherwise, nothing changed.
fn check(vm: &Vm) -> anyhow::Result<()> {
    if vm.own.phase == Phase::Creating {
        return Err(Error::Invalid(format!(
            "{} is half-made (its create did not finish): run `project-vm create {}` again, or `project-vm destroy {}`",
            vm.name, vm.name, vm.name
        ))
        .into());
    }
    if vm.own.host_key.is_none() {
        return Err(Error::Invalid(format!(
            "{} has no pinned host key (made by an older project-vm): reconfigure could not verify it keeps its identity; `apply --recreate` rebuilds it instead",
            vm.name
        ))
        .into());
    }
    Ok(())
}

/// The VM's spec with the wanted features and the fingerprint of the
/// cloud-config they make (the rest as recorded).
pub fn desired(ctx: &Ctx, vm: &Vm, wanted: &Wanted) -> anyhow::Result<VmSpec> {
    let current = vm.spec()?;
    let keys = ctx.settings.authorized_keys()?;
    let devices = Devices {
        firmware: current.firmware,
        network_config: current.network_config.clone(),
        hostdevs: current.hostdevs.clone(),
        shares: current.shares.clone(),
        ports: current.ports.clone(),
    };
    let decl = Declaration {
        name: &current.name,
        resources: current.resources,
        autostart: current.autostart,
        features: &wanted.features,
        devices: &devices,
        user_data: wanted.user_data.as_ref().map(|(_, text)| text.as_str()),
        stage_snapshots: current.stage_snapshots,
        application_script: wanted.provision.application_script.as_deref(),
        checks: match wanted.provision.checks.is_empty() {
            true => &current.checks,
            false => &wanted.provision.checks,
        },
        own_features: crate::features::own_digest(&wanted.features),
    };
    let resolved = VmSpec::resolve(&ctx.settings.host(&keys), &decl, current.base_image.clone(), current.ssh_port);
    Ok(VmSpec {
        features: resolved.features,
        cloud_init_hash: resolved.cloud_init_hash,
        application_script: resolved.application_script,
        checks: resolved.checks,
        ..current
    })
}

/// The VM running, and up: a stopped one is started and waited for (its
/// boot also removes a seed a killed run left), and a seed still recorded
/// is removed.
fn up(ctx: &Ctx, vm: &Vm, timeout: Duration, progress: &Progress) -> anyhow::Result<Vm> {
    if vm.state() != State::Running {
        progress.set_message(format!("{}: starting", vm.name));
        power::start(ctx, vm)?;
        let report = ready::wait(ctx, &vms::get(&ctx.conn(), &vm.name)?, timeout, progress)?;
        ready::check(&report)?;
    }
    let vm = vms::get(&ctx.conn(), &vm.name)?;
    if vm.own.seed_volume.is_some() {
        seed::remove(ctx, &vm)?;
    }
    vms::get(&ctx.conn(), &vm.name)
}

/// Step 1: the new seed, in the pool and the definition (not the running
/// guest: the reboot is a power cycle), and in the record. Its instance-id.
fn new_seed(
    ctx: &Ctx,
    vm: &Vm,
    spec: &VmSpec,
    wanted: &Wanted,
    user_config: Option<&Value>,
    progress: &Progress,
) -> anyhow::Result<String> {
    progress.set_message(format!("{}: new cloud-init seed", vm.name));
    let uuid = vm.dom.uuid_string().map_err(|e| explain(e, format!("reading {}'s uuid", vm.name)))?;
    let instance_id = format!("{}-{uuid}-r{}", vm.name.domain(), super::now_unix());
    let keys = ctx.settings.authorized_keys()?;
    let input = SeedInput {
        spec,
        authorized_keys: &keys,
        host_key: None,
        user_data: user_config,
        instance_id: &instance_id,
        // The guest joined its tailnet on its first boot; an auth key is for one join.
        tailscale_auth_key: None,
    };
    let prov = cloudinit::Provisioning {
        application_script: wanted.provision.application_script.as_deref(),
        checks: &spec.checks,
    };
    let iso = cloudinit::iso::build(&cloudinit::render_seed(&input, &prov, cloudinit::keep_host_key))?;
    let pool = ctx.vm_pool(vm)?.ok_or_else(|| Error::Gone { what: format!("storage pool {}", vm.own.pool) })?;
    let name = vm.name.seed_volume();
    // A seed of this name no record names: what a killed run left.
    storage::delete(&pool, &name)?;
    let new = storage::NewVolume { name: &name, format: "raw", len: iso.len() as u64, mode: "0600" };
    storage::upload(&ctx.conn(), &pool, new, &mut iso.as_slice(), &Progress::hidden())
        .context("writing the cloud-init seed")?;
    crate::interrupt::check()?;
    attach(vm, &name)?;
    let mut own = vm.own.clone();
    own.seed_volume = Some(name);
    own.write(&vm.dom)?;
    Ok(instance_id)
}

/// The seed's CD-ROM in the definition; one a killed run attached goes first.
fn attach(vm: &Vm, seed: &str) -> anyhow::Result<()> {
    let xml = domain_xml::seed_cdrom(&vm.own.pool, seed).to_xml();
    let config = virt::sys::VIR_DOMAIN_AFFECT_CONFIG;
    if vm.dom.detach_device_flags(&xml, config).is_ok() {
        tracing::debug!(vm = %vm.name, "detached a seed a killed reconfigure left");
    }
    vm.dom
        .attach_device_flags(&xml, config)
        .map_err(|e| explain(e, format!("attaching the new seed to {}", vm.name)))?;
    crate::fault::mutated("attached a new seed");
    Ok(())
}

/// What step 2 runs in the guest, as root.
/// The application script's and checks' results go too, so the reporter
/// runs them again on the provisioning boot.
pub const RESET: &str = "cloud-init clean && rm -f /var/lib/project-vm/first-boot-id \
    /var/lib/project-vm/application.exit /var/lib/project-vm/application.log \
    /var/lib/project-vm/checks.done /var/lib/project-vm/checks.jsonl && sync";

/// Step 2: the guest forgets its cloud-init instance (over ssh, the host
/// key verified against the pinned one).
fn reset(ctx: &Ctx, vm: &Vm, identity: Option<&Path>, progress: &Progress) -> anyhow::Result<()> {
    progress.set_message(format!("{}: clearing cloud-init's instance in the guest", vm.name));
    let (target, opts) = super::ssh::prepare(ctx, vm)?;
    let mut cmd = Command::new("ssh");
    for o in opts.iter().map(String::as_str).chain(["BatchMode=yes", "ConnectTimeout=30"]) {
        cmd.arg("-o").arg(o);
    }
    if let Some(id) = identity {
        cmd.arg("-i").arg(id).arg("-o").arg("IdentitiesOnly=yes");
    }
    cmd.arg("-p").arg(target.port.to_string()).arg(format!("{}@{}", target.user, target.host));
    cmd.args(["sudo", "-n", "sh", "-c", &format!("'{RESET}'")]);
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| Error::Environment(format!("cannot run ssh: {e}: install the OpenSSH client")))?;
    if !out.status.success() {
        return Err(Error::Unreachable(format!(
            "could not reach {} over ssh to clear its cloud-init instance ({}): nothing in the guest changed; check `project-vm ssh {}` works, then run reconfigure again",
            vm.name,
            String::from_utf8_lossy(&out.stderr).trim(),
            vm.name
        ))
        .into());
    }
    crate::fault::mutated("cleared the guest's cloud-init instance");
    Ok(())
}

/// Step 3: a power cycle, so the guest boots with the new seed.
fn reboot(ctx: &Ctx, vm: &Vm, progress: &Progress) -> anyhow::Result<()> {
    crate::interrupt::check()?;
    progress.set_message(format!("{}: restarting with the new seed", vm.name));
    power::stop(ctx, vm, Duration::from_secs(120), false)?;
    power::start(ctx, &vms::get(&ctx.conn(), &vm.name)?)?;
    progress.set_message(format!("{}: provisioning again", vm.name));
    Ok(())
}

/// Step 4's end: the record says what went in.
fn record(ctx: &Ctx, vm: &Vm, spec: &VmSpec) -> anyhow::Result<()> {
    let vm = vms::get(&ctx.conn(), &vm.name)?;
    let mut own = vm.own.clone();
    own.spec_json = serde_json::to_string(spec)?;
    own.write(&vm.dom)
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
    fn the_new_seed_keeps_the_guests_host_key_and_carries_the_new_config() {
        let s = spec(Network::default(), Accel::Kvm);
        let user = cloudinit::parse_user_data(
            "#cloud-config\nruncmd: [echo v2]\nwrite_files: [{path: /srv/x, content: v2}]\n",
            "u",
        )
        .unwrap();
        let merged = crate::features::user_config(&["base".into()], Some(&user)).unwrap();
        let input = SeedInput {
            spec: &s,
            authorized_keys: &[],
            host_key: None,
            user_data: merged.as_ref(),
            instance_id: "project-foo-u-r2",
            tailscale_auth_key: None,
        };
        let seed = cloudinit::render_with(&input, cloudinit::keep_host_key);
        let v = yaml(&seed.user_data);
        assert!(v.get("ssh_keys").is_none(), "no private key travels again");
        assert_eq!(
            (v["ssh_deletekeys"].as_bool(), v["ssh_genkeytypes"].clone()),
            (Some(false), serde_json::json!(["ed25519"]))
        );
        let runcmd = v["runcmd"].to_string();
        assert!(runcmd.contains("echo v2") && runcmd.contains("manual-clean"), "{runcmd}");
        assert!(v["write_files"].to_string().contains("/srv/x"));
        assert_eq!(yaml(&seed.meta_data)["instance-id"], "project-foo-u-r2");
        // The first seed deletes the image's keys and pins its own; this one neither.
        let first = cloudinit::render(&SeedInput { instance_id: "i", ..input });
        assert!(yaml(&first.user_data).get("ssh_deletekeys").is_none());
    }

    #[test]
    fn the_reset_keeps_machine_id_and_host_keys() {
        assert!(RESET.starts_with("cloud-init clean &&"), "{RESET}");
        for kept in ["--machine-id", "--configs", " -l", "--logs", "/etc/ssh", " /project"] {
            assert!(!RESET.contains(kept), "{kept} in {RESET}");
        }
        assert!(RESET.contains("first-boot-id"));
        assert!(!RESET.contains('\''), "quoted whole for the remote shell");
    }
}
