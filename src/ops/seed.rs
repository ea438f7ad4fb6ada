//! Removing the cloud-init seed once the guest has used it. The seed holds the
//! guest's private host key (and any Tailscale auth key); after the first
//! boot the guest no longer needs it (`manual_cache_clean` keeps cloud-init
//! from treating later boots as a new instance).

use super::Ctx;
use crate::libvirt::storage;
use crate::libvirt::vms::{self, Vm};
use crate::libvirt::{domain_xml, explain};

pub fn remove(ctx: &Ctx, vm: &Vm) -> anyhow::Result<()> {
    // Re-read: the record may have changed since `vm` was looked up.
    let vm = vms::get(&ctx.conn(), &vm.name)?;
    let Some(seed) = vm.own.seed_volume.clone() else { return Ok(()) };
    // The seed's device as the definition has it (libvirt finds it by its target).
    let xml = domain_xml::seed_cdrom(&vm.own.pool, &seed).to_xml();
    let live_and_config = virt::sys::VIR_DOMAIN_AFFECT_CONFIG | virt::sys::VIR_DOMAIN_AFFECT_LIVE;
    if let Err(e) = vm.dom.detach_device_flags(&xml, live_and_config) {
        tracing::debug!("live detach of the seed failed ({}); detaching from the definition only", e.message());
        vm.dom
            .detach_device_flags(&xml, virt::sys::VIR_DOMAIN_AFFECT_CONFIG)
            .map_err(|e| explain(e, format!("detaching the seed from {}", vm.name)))?;
    }
    crate::fault::mutated("detached the seed");
    let mut own = vm.own.clone();
    own.seed_volume = None;
    own.write(&vm.dom)?;
    if let Some(pool) = ctx.vm_pool(&vm)? {
        storage::delete(&pool, &seed)?;
    }
    tracing::info!(vm = %vm.name, "removed the cloud-init seed");
    Ok(())
}
