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

/// A record in project-vm's namespace that cannot be read as one: the
/// domain is not treated as project-vm's, and nothing acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable(pub String);

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreadable {}

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
    /// The domain's uuid, chosen by project-vm before the domain is defined:
    /// a record copied into another domain (`virsh dumpxml`, rename, define)
    /// no longer matches, so that domain can never act on these volumes.
    #[serde(rename = "@uuid", default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(rename = "@phase")]
    pub phase: Phase,
    #[serde(rename = "@pool")]
    pub pool: String,
    #[serde(rename = "@root")]
    pub root_volume: String,
    #[serde(rename = "@data")]
    pub data_volume: String,
    /// The project disk was kept by an earlier `destroy --keep-data` and
    /// reattached by this create: until the create finishes it is not this
    /// VM's to delete (a `destroy` of the half-made VM keeps it).
    #[serde(rename = "@data-kept", default, skip_serializing_if = "std::ops::Not::not")]
    pub data_kept: bool,
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
    /// restarts). `Ok(None)` when the domain is not ours. A record in our
    /// namespace that does not parse (hand-written, another version's) is an
    /// [`Unreadable`] error: callers treat that domain as not project-vm's.
    pub fn read(dom: &Domain) -> anyhow::Result<Option<Ownership>> {
        let flags = virt::sys::VIR_DOMAIN_AFFECT_CONFIG;
        match dom.metadata(virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32, Some(NAMESPACE), flags) {
            Ok(xml) => Ownership::parse(&xml).map(Some).map_err(|e| anyhow::Error::new(Unreadable(format!("{e}")))),
            Err(e) if super::is(&e, ErrorNumber::NoDomainMetadata) => Ok(None),
            Err(e) => Err(super::errors::Error::call("reading metadata", e).into()),
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
        .map_err(|e| super::explain(e, "writing project-vm metadata"))?;
        crate::fault::mutated("wrote metadata");
        Ok(())
    }

    /// Why this record does not belong to domain `domain_name` (uuid
    /// `domain_uuid`), if it does not: it must name that domain, carry its
    /// uuid (records from before uuids are checked by name alone), and list
    /// exactly the volumes that domain's name implies.
    pub fn mismatch(&self, domain_name: &str, domain_uuid: &str) -> Option<String> {
        let Ok(name) = crate::spec::VmName::parse(&self.name) else {
            return Some(format!("its record names {:?}, not a VM name", self.name));
        };
        if name.domain() != domain_name {
            return Some(format!("its record belongs to {} (a copied definition?)", name.domain()));
        }
        if let Some(u) = &self.uuid {
            if !u.eq_ignore_ascii_case(domain_uuid) {
                return Some(format!(
                    "its record belongs to the domain with uuid {u}, not {domain_uuid} (a copied definition?)"
                ));
            }
        }
        let seed_ok = self.seed_volume.as_ref().is_none_or(|s| *s == name.seed_volume());
        if self.root_volume != name.root_volume() || self.data_volume != name.data_volume() || !seed_ok {
            return Some("its record lists volumes that are not this VM's".into());
        }
        None
    }

    /// `Some(keep_data)` when the VM is half-made (its create or its destroy
    /// was killed), saying whether undoing what is left must keep the project
    /// disk: an unfinished create made it empty unless it reattached a kept
    /// one; a destroy that got as far as removing the root disk was removing
    /// a VM that ran. `None` for a whole VM. `root_exists`: its root volume is there.
    pub fn half_made(&self, root_exists: bool) -> Option<bool> {
        match self.phase {
            Phase::Creating => Some(self.data_kept),
            Phase::Ready if !root_exists => Some(true),
            Phase::Ready => None,
        }
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
            uuid: Some("0b5e4b1e-8f0c-4a5e-9d6b-2f1f1c7a9e01".into()),
            phase: Phase::Ready,
            pool: "project-vm".into(),
            root_volume: "project-foo-root.qcow2".into(),
            data_volume: "project-foo-data.qcow2".into(),
            data_kept: true,
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
    fn a_record_binds_to_one_domain() {
        let o = sample();
        assert_eq!(o.mismatch("project-foo", "0B5E4B1E-8F0C-4A5E-9D6B-2F1F1C7A9E01"), None);
        assert!(o
            .mismatch("project-bar", "0b5e4b1e-8f0c-4a5e-9d6b-2f1f1c7a9e01")
            .unwrap()
            .contains("belongs to project-foo"));
        assert!(o.mismatch("project-foo", "11111111-8f0c-4a5e-9d6b-2f1f1c7a9e01").unwrap().contains("uuid"));
        let renamed = Ownership { name: "bar".into(), ..o.clone() };
        assert!(renamed.mismatch("project-bar", "0b5e4b1e-8f0c-4a5e-9d6b-2f1f1c7a9e01").unwrap().contains("volumes"));
        let legacy = Ownership { uuid: None, ..o };
        assert_eq!(legacy.mismatch("project-foo", "anything"), None);
    }

    #[test]
    fn a_half_made_vm_keeps_only_a_disk_that_may_hold_data() {
        let mut o = sample();
        assert_eq!(o.half_made(true), None, "whole");
        assert_eq!(o.half_made(false), Some(true), "a killed destroy: the VM ran");
        o.phase = Phase::Creating;
        assert_eq!(o.half_made(true), Some(true), "a create that reattached a kept disk");
        o.data_kept = false;
        assert_eq!(o.half_made(true), Some(false), "a create's own new disk is empty");
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
        assert!(!o.data_kept, "absent means not kept");
        assert_eq!(o.volumes(false), vec!["r"]);
        assert_eq!(o.volumes(true), vec!["r", "d"]);
    }
}
