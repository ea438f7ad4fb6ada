//! `image save VM NAME`: a prepared VM's root disk becomes a template image.
//!
//! 1. **copy**: libvirt copies the root overlay into a new image volume,
//!    flattened (standalone: it does not depend on the VM's base image).
//! 2. **seal**: the copy (never the VM itself) boots once as a throwaway
//!    domain, on the VM's own MAC and pinned host key, and a script run over
//!    ssh removes what makes it that machine (cloud-init/seal-template.sh),
//!    then powers it off. VMs made from the image are new machines.
//! 3. **record**: the image's record (its parent image and source VM) is
//!    written last, as for a pull: an interrupted save leaves nothing
//!    `create` would use, and `gc` removes the copy.
//!
//! The VM must be stopped for the copy; `--stop` stops it and starts it
//! again afterwards. Sealing reaches the copy through a forwarded loopback
//! port, so the libvirt host must be this machine.

use std::io::{self, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Ctx;
use super::Error;
use crate::images::checksum::{Algo, Hasher};
use crate::images::record::{self, ImageRecord};
use crate::images::store;
use crate::libvirt::domain_xml::{self, Purpose};
use crate::libvirt::explain;
use crate::libvirt::metadata::Ownership;
use crate::libvirt::storage::{self, VolumeInfo};
use crate::libvirt::vms::{State, Vm};
use crate::output::{human, Report};
use crate::progress::Progress;
use crate::spec::Network;

const SEAL: &str = include_str!("../../cloud-init/seal-template.sh");

#[derive(Debug, Serialize)]
pub struct SaveReport {
    pub name: String,
    pub volume: String,
    pub source_vm: String,
    /// The image the VM was built on.
    pub parent: String,
    pub checksum: String,
    pub size: u64,
    pub capacity: u64,
    /// The VM was stopped for the copy and started again.
    pub restarted: bool,
    pub elapsed_ms: u128,
}

impl Report for SaveReport {
    fn human(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(
            out,
            "saved {} as image {} ({}, {} virtual; from {} on {}){}",
            self.source_vm,
            self.name,
            self.volume,
            human(self.capacity),
            self.source_vm,
            self.parent,
            if self.restarted { "; started it again" } else { "" }
        )
    }
}

pub fn save(
    ctx: &Ctx,
    vm: &Vm,
    name: &str,
    stop: bool,
    identity: Option<&Path>,
    progress: &Progress,
) -> anyhow::Result<SaveReport> {
    let started = Instant::now();
    let host_key = check_savable(ctx, vm, name)?;
    let _vm_lock = super::vm_lock(ctx, &vm.name, "saving")?;
    check_prepared(ctx, vm)?;
    let _image_lock =
        crate::lock::acquire(&ctx.lock_scope()?, &format!("image:{}/{name}", ctx.settings.pool), "saving", |_| {})?;
    let pool =
        ctx.vm_pool(vm)?.ok_or_else(|| anyhow::anyhow!("storage pool {} of {} is gone", vm.own.pool, vm.name))?;
    if store::find(&ctx.conn(), &pool, name)?.is_some() {
        return Err(invalid(format!(
            "image {name} already exists: pick another name, or `project-vm image rm {name}` first"
        )));
    }
    let running = vm.state() != State::Shutoff;
    if running && !stop {
        return Err(invalid(format!(
            "{} is running: stop it first, or pass --stop (it is stopped for the copy and started again)",
            vm.name
        )));
    }
    if running {
        progress.set_message(format!("{}: stopping for the copy", vm.name));
        super::power::stop(ctx, vm, Duration::from_secs(120), false)?;
    }
    let result = copy_seal_record(ctx, vm, &pool, name, &host_key, identity, progress);
    if running {
        progress.set_message(format!("{}: starting again", vm.name));
        super::power::start(ctx, vm)?;
    }
    let (rec, disk) = result?;
    Ok(SaveReport {
        name: rec.name,
        volume: rec.volume,
        source_vm: vm.name.to_string(),
        parent: rec.parent.unwrap_or_default(),
        checksum: rec.checksum.to_string(),
        size: rec.size,
        capacity: disk.capacity,
        restarted: running,
        elapsed_ms: started.elapsed().as_millis(),
    })
}

/// Bad input this verb itself found (the ops layer's [`Error::Invalid`]).
fn invalid(message: String) -> anyhow::Error {
    Error::Invalid(message).into()
}

/// What can be told before anything is locked: a valid image name, a local
/// libvirt host (sealing goes through its loopback), and the VM's pinned
/// host key, which is returned.
fn check_savable(ctx: &Ctx, vm: &Vm, name: &str) -> anyhow::Result<String> {
    record::validate_name(name)?;
    if !ctx.is_local() {
        return Err(invalid(format!(
            "image save seals the copy through a loopback port on the libvirt host, so it needs a local libvirt ({} is remote): run it on that host",
            ctx.uri
        )));
    }
    vm.own.host_key.clone().ok_or_else(|| {
        invalid(format!("{} has no pinned host key (made by an older project-vm): it cannot be sealed safely", vm.name))
    })
}

/// A half-made VM (its create, or its destroy, did not finish) has no
/// prepared disk to save: exit 8 (not in a state for this), like `start` and `snapshot`.
fn check_prepared(ctx: &Ctx, vm: &Vm) -> anyhow::Result<()> {
    let root_exists = match ctx.vm_pool(vm)? {
        Some(pool) => storage::find_volume(&pool, &vm.own.root_volume)?.is_some(),
        None => false,
    };
    if vm.own.half_made(root_exists).is_some() {
        return Err(super::Error::HalfMade(format!(
            "{} is half-made (its create or destroy did not finish): there is no prepared disk to save. Run `project-vm create {}` again, or `project-vm destroy {}`",
            vm.name, vm.name, vm.name
        ))
        .into());
    }
    Ok(())
}

fn copy_seal_record(
    ctx: &Ctx,
    vm: &Vm,
    pool: &virt::storage_pool::StoragePool,
    name: &str,
    host_key: &str,
    identity: Option<&Path>,
    progress: &Progress,
) -> anyhow::Result<(ImageRecord, VolumeInfo)> {
    let spec = vm.spec()?;
    let generation = store::new_generation(name);
    let disk_name = record::disk_volume(name, &generation);
    let root = storage::find_volume(pool, &vm.own.root_volume)?
        .ok_or_else(|| anyhow::anyhow!("{}'s root disk {} is gone", vm.name, vm.own.root_volume))?;
    progress.set_message(format!("{}: copying the root disk", vm.name));
    let disk = storage::clone_flat(pool, &disk_name, &root)?;
    let outcome = (|| -> anyhow::Result<(ImageRecord, VolumeInfo)> {
        crate::interrupt::check()?;
        seal(ctx, vm, &disk_name, host_key, identity, progress)?;
        crate::interrupt::check()?;
        progress.set_message(format!("{name}: checksum"));
        let mut hasher = HashSink(Hasher::new(Algo::Sha256));
        let size = storage::download(&ctx.conn(), &disk, &mut hasher)?;
        let _ = pool.refresh(0);
        let info = VolumeInfo::of(&storage::find_volume(pool, &disk_name)?.expect("just made"))?;
        let rec = ImageRecord {
            project_vm_image: record::RECORD_VERSION,
            name: name.to_owned(),
            volume: disk_name.clone(),
            format: info.format.clone(),
            size,
            checksum: hasher.0.finish(),
            verified: false,
            source: format!("vm:{}", vm.name),
            created: super::now_unix(),
            parent: Some(spec.base_image.clone()),
        };
        store::commit(&ctx.conn(), pool, &rec)?;
        Ok((rec, info))
    })();
    if outcome.is_err() {
        if let Err(e) = storage::delete(pool, &disk_name) {
            crate::messages::warn(format!("could not remove the unfinished copy {disk_name}: {e:#}"));
        }
    }
    outcome
}

struct HashSink(Hasher);

impl Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Boots the copy as a throwaway domain and runs the seal script in it.
fn seal(
    ctx: &Ctx,
    vm: &Vm,
    disk_name: &str,
    host_key: &str,
    identity: Option<&Path>,
    progress: &Progress,
) -> anyhow::Result<()> {
    let port = super::create::free_port(
        ctx,
        match ctx.settings.network {
            Network::User { ssh_port } => ssh_port,
            _ => 22022,
        },
    )?;
    let spec = vm.spec()?.for_sealing(port);
    // The copy is the root disk; no seed.
    let own = Ownership { root_volume: disk_name.to_owned(), seed_volume: None, ..vm.own.clone() };
    let xml = domain_xml::build_for(&spec, &own, &domain_xml::HostFiles::default(), &Purpose::Seal);
    progress.set_message(format!("{}: booting the copy to seal it", vm.name));
    let dom = ctx
        .conn()
        .create_domain_xml(&xml.to_xml(), 0)
        .map_err(|e| explain(e, format!("booting the copy of {} to seal it", vm.name)))?;
    crate::fault::mutated("started the sealing domain");
    // Until the throwaway domain is gone, a signal is handled here, not by the grace exit.
    let _hold = crate::interrupt::hold();
    let sealed = (|| -> anyhow::Result<()> {
        super::ready::await_report(ctx, &dom, &xml.name, Duration::from_secs(900), progress)?;
        progress.set_message(format!("{}: sealing the copy", vm.name));
        run_seal(vm, &spec.ssh_user, port, host_key, identity)?;
        let t0 = Instant::now();
        while dom.is_active().unwrap_or(false) {
            crate::interrupt::check()?;
            if t0.elapsed() > Duration::from_secs(180) {
                anyhow::bail!("the sealed copy of {} did not power off", vm.name);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(())
    })();
    if dom.is_active().unwrap_or(false) {
        let _ = dom.destroy();
    }
    sealed
}

fn run_seal(vm: &Vm, user: &str, port: u16, host_key: &str, identity: Option<&Path>) -> anyhow::Result<()> {
    let alias = vm.name.domain();
    let kh = super::ssh::known_hosts_path();
    super::ssh::pin_host_key(&kh, &alias, host_key)?;
    let mut cmd = Command::new("ssh");
    for o in [
        format!("HostKeyAlias={alias}"),
        "StrictHostKeyChecking=yes".into(),
        format!("UserKnownHostsFile={}", kh.display()),
        "BatchMode=yes".into(),
        "ConnectTimeout=30".into(),
    ] {
        cmd.arg("-o").arg(o);
    }
    if let Some(id) = identity {
        cmd.arg("-i").arg(id).arg("-o").arg("IdentitiesOnly=yes");
    }
    cmd.arg("-p").arg(port.to_string()).arg(format!("{user}@127.0.0.1")).args(["sudo", "-n", "sh", "-s"]);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Environment(format!("cannot run ssh: {e}: install the OpenSSH client")))?;
    child.stdin.take().expect("piped").write_all(SEAL.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(anyhow::anyhow!(
            "sealing the copy of {} over ssh failed: {}",
            vm.name,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}
