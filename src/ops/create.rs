//! `create`: volumes, seed and domain for a new VM.
//!
//! Order matters for safety. The domain is defined *first*, with project-vm's
//! metadata in phase `creating` naming every volume this run will make: that
//! claims the name atomically (libvirt refuses a duplicate) and means there is
//! never a volume without a record of its owner. Then the volumes, then the
//! phase flips to `ready`. Any failure (or Ctrl-C) undoes exactly what this run
//! made; a reattached project disk is never part of that.

use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;
use virt::domain::Domain;
use virt::storage_pool::StoragePool;

use super::{now_unix, Ctx};
use crate::cloudinit::{self, hostkey::HostKey, SeedInput};
use crate::error::invalid;
use crate::interrupt;
use crate::libvirt::metadata::{Ownership, Phase};
use crate::libvirt::storage::{self, VolumeInfo};
use crate::libvirt::vms::{self, Lookup};
use crate::libvirt::{domain_xml, explain};
use crate::progress::Progress;
use crate::settings::Network;
use crate::spec::{Resources, VmName, VmSpec};

pub use crate::cloudinit::Fingerprint;

/// What the user asked for; settings fill in the rest.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub name: VmName,
    pub resources: Resources,
    /// Image name or file; `None`: the `base_image` setting.
    pub image: Option<String>,
    pub user_data: Option<(Value, String)>,
    /// Feature snippets (cloud-init/features) merged before the user-data.
    pub features: Vec<String>,
    pub autostart: bool,
}

impl CreateRequest {
    pub fn load_user_data(path: &std::path::Path) -> anyhow::Result<(Value, String)> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(format!("cannot read user-data file {}: {e}", path.display())))?;
        let value = cloudinit::parse_user_data(&text, &path.display().to_string())?;
        Ok((value, text))
    }
}

#[derive(Debug, Serialize)]
pub struct CreateReport {
    pub name: String,
    pub domain: String,
    pub uuid: String,
    pub root_volume: String,
    pub data_volume: String,
    /// True when an existing project disk (kept by `destroy --keep-data`) was reattached.
    pub data_reattached: bool,
    pub data_capacity: u64,
    pub seed_volume: String,
    pub base_image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
    pub elapsed_ms: u128,
}

/// Undoes a partial create when dropped while armed.
struct Undo<'a> {
    pool: &'a StoragePool,
    dom: Option<Domain>,
    volumes: Vec<String>,
    armed: bool,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for v in self.volumes.iter().rev() {
            match storage::delete(self.pool, v) {
                Ok(_) => tracing::info!(volume = %v, "rolled back volume"),
                Err(e) => eprintln!("warning: could not remove volume {v} while undoing create: {e:#}"),
            }
        }
        if let Some(d) = &self.dom {
            if let Err(e) = d.undefine() {
                eprintln!(
                    "warning: could not undefine {} while undoing create: {}",
                    d.name().unwrap_or_default(),
                    e.message()
                );
            }
        }
    }
}

/// The base image's name as the spec records it.
pub fn base_name(ctx: &Ctx, requested: Option<&str>) -> String {
    super::pull::image_name(requested.unwrap_or(&ctx.settings.base_image))
}

/// The spec `create` would record for `req` (the ssh port aside), so `plan`
/// can compare what exists with what is declared. `keys`: the settings'
/// authorized keys, read once by the caller.
pub fn desired_spec(
    ctx: &Ctx,
    req: &CreateRequest,
    keys: &[String],
    base_image: String,
    ssh_port: Option<u16>,
) -> VmSpec {
    VmSpec {
        name: req.name.clone(),
        resources: req.resources,
        base_image,
        accel: ctx.settings.accel,
        network: ctx.settings.network.clone(),
        ssh_user: ctx.settings.ssh_user.clone(),
        ssh_port,
        tailnet: ctx.settings.tailnet.clone(),
        autostart: req.autostart,
        features: req.features.clone(),
        cloud_init_hash: cloudinit::fingerprint(&cloudinit::Fingerprint {
            ssh_user: &ctx.settings.ssh_user,
            authorized_keys: keys,
            features: &req.features,
            user_data: req.user_data.as_ref().map(|(_, text)| text.as_str()),
            tailnet: ctx.settings.tailnet.as_deref(),
            tailscale: ctx.settings.tailscale_auth_key_file.is_some(),
        }),
    }
}

/// Serialises port choice and the define that records it, across threads
/// (apply --jobs) and processes, so no two VMs get the same forwarded port.
/// (Each call opens the lock file anew, so threads contend like processes.)
fn port_lock(ctx: &Ctx) -> anyhow::Result<crate::lock::Lock> {
    crate::lock::acquire(&ctx.uri, "ssh-ports", |_| {})
}

/// For user networking: the first free forwarded port at or above the base.
fn pick_ssh_port(ctx: &Ctx, base: u16) -> anyhow::Result<u16> {
    let used: Vec<u16> = vms::list(&ctx.conn)?.iter().filter_map(|vm| vm.spec().ok()?.ssh_port).collect();
    (base..=u16::MAX).find(|p| !used.contains(p)).ok_or_else(|| invalid(format!("no free ssh port at or above {base}")))
}

pub fn create(ctx: &Ctx, req: &CreateRequest, progress: &Progress) -> anyhow::Result<CreateReport> {
    let started = Instant::now();
    let name = &req.name;
    req.resources.validate().map_err(|e| invalid(format!("VM {name}: {e}")))?;

    match vms::lookup(&ctx.conn, name)? {
        Lookup::Absent => {}
        Lookup::Foreign(why) => return Err(vms::foreign(name, why.as_deref())),
        Lookup::Owned(vm) if vm.own.phase == Phase::Creating => {
            return Err(invalid(format!(
                "an earlier create of {name} did not finish: remove what it left with `project-vm destroy {name} --keep-data` (keeps the project disk), then create again"
            )))
        }
        Lookup::Owned(_) => {
            return Err(invalid(format!(
                "VM {name} already exists: start it with `project-vm start {name}`, or remove it with `project-vm destroy {name}` first"
            )))
        }
    }
    let authorized_keys = ctx.settings.authorized_keys()?;
    let tailscale_auth_key = match (&ctx.settings.tailnet, &ctx.settings.tailscale_auth_key_file) {
        (Some(_), Some(path)) => Some(
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_owned())
                .map_err(|e| invalid(format!("cannot read tailscale_auth_key_file {}: {e}", path.display())))?,
        ),
        _ => None,
    };

    progress.set_message(format!("creating {name}: base image"));
    let (pool, image) = super::pull::ensure(ctx, req.image.as_deref().unwrap_or(&ctx.settings.base_image), progress)?;
    let base = &image.disk;
    let base_image = image.record.name.clone();
    if req.resources.disk.bytes() < base.capacity {
        return Err(invalid(format!(
            "disk {} is smaller than the base image {base_image} ({} bytes): give a disk of at least {}",
            req.resources.disk,
            base.capacity,
            crate::spec::Size(base.capacity.div_ceil(1 << 30) << 30)
        )));
    }
    for vol in [name.root_volume(), name.seed_volume()] {
        if storage::find_volume(&pool, &vol)?.is_some() {
            return Err(invalid(format!(
                "volume {vol} already exists in pool {} but no VM {name} owns it: it was not made by this project-vm, so it is left alone; remove it with `virsh vol-delete {vol} --pool {}` if it is yours to remove",
                ctx.settings.pool, ctx.settings.pool
            )));
        }
    }
    let existing_data = storage::find_volume(&pool, &name.data_volume())?.map(|v| VolumeInfo::of(&v)).transpose()?;
    if let Some(d) = &existing_data {
        if d.format != "qcow2" {
            return Err(invalid(format!(
                "volume {} exists but is {} rather than qcow2, so it cannot be reattached as {name}'s project disk",
                d.name, d.format
            )));
        }
    }

    let define_guard = match ctx.settings.network {
        Network::User { .. } => Some(port_lock(ctx)?),
        _ => None,
    };
    let ssh_port = match ctx.settings.network {
        Network::User { ssh_port } => Some(pick_ssh_port(ctx, ssh_port)?),
        _ => None,
    };
    let mut spec = desired_spec(ctx, req, &authorized_keys, base_image.clone(), ssh_port);
    if let Some(d) = &existing_data {
        // A reattached disk keeps its size; record the truth.
        spec.resources.project_disk = crate::spec::Size(d.capacity);
    }
    let user_config = crate::features::user_config(&req.features, req.user_data.as_ref().map(|(v, _)| v))?;
    let host_key = HostKey::generate(&name.domain())?;
    let mut own = Ownership {
        xmlns: None,
        version: 1,
        name: name.to_string(),
        uuid: Some(uuid::Uuid::new_v4().to_string()),
        phase: Phase::Creating,
        pool: ctx.settings.pool.clone(),
        root_volume: name.root_volume(),
        data_volume: name.data_volume(),
        seed_volume: Some(name.seed_volume()),
        created: now_unix(),
        host_key: Some(host_key.public_openssh.clone()),
        spec_json: serde_json::to_string(&spec)?,
    };

    let mut undo = Undo { pool: &pool, dom: None, volumes: Vec::new(), armed: true };
    interrupt::check()?;
    progress.set_message(format!("creating {name}: domain"));
    let xml = domain_xml::build(&spec, &own, super::serial_log(ctx, &name.domain())).to_xml();
    tracing::debug!(%xml, "defining domain");
    let dom = ctx.conn.define_domain_xml(&xml).map_err(|e| {
        match e.code().is(virt::error::ErrorNumber::OperationFailed) && e.message().contains("already exists") {
            true => invalid(format!("VM {name} already exists (created concurrently?): {}", e.message())),
            false => explain(e, format!("defining domain {}", name.domain())),
        }
    })?;
    undo.dom = Some(dom.clone());
    drop(define_guard);
    let uuid = dom.uuid_string().unwrap_or_default();

    interrupt::check()?;
    progress.set_message(format!("creating {name}: root disk (overlay on {base_image})"));
    storage::create_overlay(&pool, &own.root_volume, req.resources.disk.bytes(), base)?;
    undo.volumes.push(own.root_volume.clone());

    interrupt::check()?;
    let data_capacity = match &existing_data {
        Some(d) => {
            tracing::info!(volume = %d.name, "reattaching project disk");
            d.capacity
        }
        None => {
            progress.set_message(format!("creating {name}: project disk"));
            storage::create_qcow2(&pool, &own.data_volume, req.resources.project_disk.bytes())?;
            undo.volumes.push(own.data_volume.clone());
            req.resources.project_disk.bytes()
        }
    };

    interrupt::check()?;
    progress.set_message(format!("creating {name}: cloud-init seed"));
    let seed = cloudinit::render(&SeedInput {
        spec: &spec,
        authorized_keys: &authorized_keys,
        host_key: Some(&host_key),
        user_data: user_config.as_ref(),
        instance_id: &format!("{}-{uuid}", name.domain()),
        tailscale_auth_key: tailscale_auth_key.as_deref(),
    });
    let iso = cloudinit::iso::build(&seed)?;
    // 0600: the seed carries the guest's private host key (and any auth key).
    // (upload removes its own volume if it fails part-way)
    let seed_name = name.seed_volume();
    let new = storage::NewVolume { name: &seed_name, format: "raw", len: iso.len() as u64, mode: "0600" };
    storage::upload(&ctx.conn, &pool, new, &mut iso.as_slice(), &Progress::hidden())
        .context("writing the cloud-init seed")?;
    undo.volumes.push(seed_name.clone());

    interrupt::check()?;
    own.phase = Phase::Ready;
    own.write(&dom)?;
    if req.autostart {
        dom.set_autostart(true).map_err(|e| explain(e, "setting autostart"))?;
    }
    undo.armed = false;
    tracing::info!(vm = %name, "created");
    Ok(CreateReport {
        name: name.to_string(),
        domain: name.domain(),
        uuid,
        root_volume: own.root_volume,
        data_volume: own.data_volume,
        data_reattached: existing_data.is_some(),
        data_capacity,
        seed_volume: seed_name,
        base_image,
        ssh_port,
        elapsed_ms: started.elapsed().as_millis(),
    })
}
