//! project-vm's ownership record, stored in the domain's `<metadata>` under our
//! own XML namespace.
//!
//! A domain without it is not ours: no command acts on it. It lists the
//! volumes the VM owns, so `destroy` deletes exactly those and nothing else,
//! and it is written *before* any volume is created, so an interrupted create
//! leaves a record that `destroy` can clean up instead of anonymous orphans.

use serde::{Deserialize, Serialize};
use virt::domain::Domain;
use virt::error::ErrorNumber;

use crate::spec::VmSpec;

pub const NAMESPACE: &str = "https://project-vm.dev/xmlns/domain/1";
pub const PREFIX: &str = "projectvm";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// `create` is still making volumes (or was interrupted doing so).
    Creating,
    Ready,
}

/// The record. Attributes only, plus the spec as JSON text: libvirt may hand
/// the element back with a different prefix, and attributes survive that.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename = "vm")]
pub struct Ownership {
    /// Set only when embedded in a full domain definition.
    #[serde(rename = "@xmlns:projectvm", default, skip_serializing_if = "Option::is_none")]
    pub xmlns: Option<String>,
    #[serde(rename = "@version")]
    pub version: u32,
    #[serde(rename = "@name")]
    pub name: String,
    #[serde(rename = "@phase")]
    pub phase: Phase,
    #[serde(rename = "@pool")]
    pub pool: String,
    #[serde(rename = "@root")]
    pub root_volume: String,
    #[serde(rename = "@data")]
    pub data_volume: String,
    /// Removed once the guest has booted and the seed (which holds secrets) is deleted.
    #[serde(rename = "@seed", default, skip_serializing_if = "Option::is_none")]
    pub seed_volume: Option<String>,
    #[serde(rename = "@created")]
    pub created: u64,
    /// The guest's ssh host public key, generated at create: ssh pins it.
    #[serde(rename = "@host-key", default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
    /// The resolved spec, JSON.
    #[serde(rename = "$text")]
    pub spec_json: String,
}

impl Ownership {
    pub fn spec(&self) -> anyhow::Result<VmSpec> {
        serde_json::from_str(&self.spec_json)
            .map_err(|e| anyhow::anyhow!("project-vm metadata of VM {} has an unreadable spec: {e}", self.name))
    }

    /// The element for `virDomainSetMetadata` (no prefix: libvirt adds it).
    pub fn to_element(&self) -> String {
        let bare = Ownership { xmlns: None, ..self.clone() };
        quick_xml::se::to_string(&bare).expect("ownership metadata serializes")
    }

    pub fn parse(xml: &str) -> anyhow::Result<Ownership> {
        quick_xml::de::from_str(xml).map_err(|e| anyhow::anyhow!("unreadable project-vm metadata: {e}"))
    }

    /// Reads the record from a domain's persistent definition (the source of
    /// truth: a running guest's live copy lags behind a redefine until it
    /// restarts). `Ok(None)` when the domain is not ours.
    pub fn read(dom: &Domain) -> anyhow::Result<Option<Ownership>> {
        let flags = virt::sys::VIR_DOMAIN_AFFECT_CONFIG;
        match dom.metadata(virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32, Some(NAMESPACE), flags) {
            Ok(xml) => Ownership::parse(&xml).map(Some),
            Err(e) if super::is(&e, ErrorNumber::NoDomainMetadata) => Ok(None),
            Err(e) => Err(anyhow::anyhow!("reading metadata: {}", e.message())),
        }
    }

    /// Replaces the record in the persistent definition (and the live one, if running).
    pub fn write(&self, dom: &Domain) -> anyhow::Result<()> {
        let mut flags = virt::sys::VIR_DOMAIN_AFFECT_CONFIG;
        if dom.is_active().unwrap_or(false) {
            flags |= virt::sys::VIR_DOMAIN_AFFECT_LIVE;
        }
        dom.set_metadata(
            virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            Some(&self.to_element()),
            Some(PREFIX),
            Some(NAMESPACE),
            flags,
        )
        .map_err(|e| anyhow::anyhow!("writing project-vm metadata: {}", e.message()))
    }

    /// The volumes this VM owns (the data volume only when `with_data`).
    pub fn volumes(&self, with_data: bool) -> Vec<&str> {
        let mut v = vec![self.root_volume.as_str()];
        if with_data {
            v.push(&self.data_volume);
        }
        if let Some(s) = &self.seed_volume {
            v.push(s);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Ownership {
        Ownership {
            xmlns: None,
            version: 1,
            name: "foo".into(),
            phase: Phase::Ready,
            pool: "project-vm".into(),
            root_volume: "project-foo-root.qcow2".into(),
            data_volume: "project-foo-data.qcow2".into(),
            seed_volume: Some("project-foo-seed.iso".into()),
            created: 1_700_000_000,
            host_key: Some("ssh-ed25519 AAAA project-foo".into()),
            spec_json: r#"{"a":"<&>"}"#.into(),
        }
    }

    #[test]
    fn round_trips_with_escaping() {
        let o = sample();
        let xml = o.to_element();
        assert!(xml.starts_with("<vm "), "{xml}");
        assert!(!xml.contains("xmlns"), "{xml}");
        assert_eq!(Ownership::parse(&xml).unwrap(), o);
    }

    #[test]
    fn parses_what_libvirt_returns_with_a_prefix() {
        // libvirt returns the element with the namespace it was stored under.
        let xml = format!(
            r#"<projectvm:vm xmlns:projectvm="{NAMESPACE}" version="1" name="foo" phase="creating" pool="p" root="r" data="d" created="5">{{}}</projectvm:vm>"#
        );
        let o = Ownership::parse(&xml).unwrap();
        assert_eq!(o.phase, Phase::Creating);
        assert_eq!(o.seed_volume, None);
        assert_eq!(o.volumes(false), vec!["r"]);
        assert_eq!(o.volumes(true), vec!["r", "d"]);
    }
}
