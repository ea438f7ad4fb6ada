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

#[cfg(test)]
mod tests {
    use crate::libvirt::domain_xml::{self, tests::ownership, tests::spec, HostFiles};
    use crate::spec::{Accel, Network, VmName};

    /// The seed's device XML (the builder's own) detaches the seed from a
    /// definition the builder made, and only the seed. libvirt's test driver
    /// has no detach: this defines (never starts) a domain of its own on the
    /// system daemon, and undefines it.
    #[test]
    #[ignore = "needs libvirtd on qemu:///system; run by scripts/test.sh"]
    fn the_seed_device_detaches_from_the_builders_definition() {
        virt::error::clear_error_callback();
        let conn = virt::connect::Connect::open(Some("qemu:///system")).unwrap();
        let mut s = spec(Network::default(), Accel::Tcg);
        s.name = VmName::parse(&format!("seedtest-{}", std::process::id())).unwrap();
        let o = ownership(&s);
        let dom = conn.define_domain_xml(&domain_xml::build(&s, &o, &HostFiles::default()).to_xml()).unwrap();
        let seed = domain_xml::seed_cdrom(&o.pool, o.seed_volume.as_deref().unwrap()).to_xml();
        let detached = dom.detach_device_flags(&seed, virt::sys::VIR_DOMAIN_AFFECT_CONFIG);
        let after = dom.xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE).unwrap();
        dom.undefine().unwrap();
        detached.unwrap();
        // libvirt writes attributes in single quotes; the record in the metadata still names the seed.
        let source = |v: &str| format!("volume='{v}'");
        assert!(!after.contains("cdrom") && !after.contains(&source(o.seed_volume.as_deref().unwrap())), "{after}");
        assert!(after.contains(&source(&o.root_volume)) && after.contains(&source(&o.data_volume)), "{after}");
    }
}
