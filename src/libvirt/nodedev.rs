//! Host PCI devices as libvirt knows them (node devices), for passthrough:
//! an address must name a device that exists, and `status` says what it is.

use serde::{Deserialize, Serialize};
use virt::connect::Connect;

use super::errors::Error;
use super::{explain, is};
use crate::spec::PciAddress;

#[derive(Debug, Clone, Serialize)]
pub struct PciDevice {
    pub address: String,
    pub vendor_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    pub product_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
}

#[derive(Deserialize)]
struct DeviceXml {
    capability: Capability,
}

#[derive(Deserialize)]
struct Capability {
    #[serde(default)]
    product: Option<Id>,
    #[serde(default)]
    vendor: Option<Id>,
}

#[derive(Deserialize)]
struct Id {
    #[serde(rename = "@id")]
    id: String,
    #[serde(rename = "$text", default)]
    name: Option<String>,
}

/// The device at `addr`, or a clear "no such device" (exit 2).
pub fn pci(conn: &Connect, addr: &PciAddress) -> anyhow::Result<PciDevice> {
    let dev = conn.lookup_node_device_by_name(&addr.node_device()).map_err(|e| {
        match is(&e, virt::error::ErrorNumber::NoNodeDevice) {
            true => {
                Error::Invalid(format!("no PCI device {addr} on the libvirt host (see `virsh nodedev-list --cap pci`)"))
                    .into()
            }
            false => super::explain_on(conn, e, format!("looking up PCI device {addr}")),
        }
    })?;
    let xml = dev.xml_desc(0).map_err(|e| explain(e, format!("reading PCI device {addr}")))?;
    parse(addr, &xml)
}

fn parse(addr: &PciAddress, xml: &str) -> anyhow::Result<PciDevice> {
    let d: DeviceXml =
        quick_xml::de::from_str(xml).map_err(|e| anyhow::anyhow!("unreadable node device {addr}: {e}"))?;
    let (vendor_id, vendor) = d.capability.vendor.map(|v| (v.id, v.name)).unwrap_or_default();
    let (product_id, product) = d.capability.product.map(|p| (p.id, p.name)).unwrap_or_default();
    Ok(PciDevice { address: addr.to_string(), vendor_id, vendor, product_id, product })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vendor_and_product() {
        let xml = "<device><name>pci_0000_01_00_0</name><capability type='pci'><class>0x030000</class>\
            <product id='0x2204'>GA102 [GeForce RTX 3090]</product><vendor id='0x10de'>NVIDIA Corporation</vendor>\
            <iommuGroup number='16'/></capability></device>";
        let d = parse(&PciAddress::parse("0000:01:00.0").unwrap(), xml).unwrap();
        assert_eq!((d.vendor.as_deref(), d.product_id.as_str()), (Some("NVIDIA Corporation"), "0x2204"));
        let bare = "<device><capability type='pci'><product id='0x0d57'/><vendor id='0x8086'/></capability></device>";
        let d = parse(&PciAddress::parse("00:00.0").unwrap(), bare).unwrap();
        assert_eq!((d.vendor, d.vendor_id.as_str()), (None, "0x8086"));
    }
}
