//! libvirt's domain snapshot XML: what project-vm asks for, and what it
//! reads back for `snapshot list`.

use serde::{Deserialize, Serialize};

/// `<domainsnapshot>` for `virDomainSnapshotCreateXML`.
#[derive(Debug, Serialize)]
#[serde(rename = "domainsnapshot")]
pub struct NewSnapshot {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub memory: Mode,
    pub disks: Disks,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Mode {
    /// `internal` or `no`.
    #[serde(rename = "@snapshot")]
    pub snapshot: String,
}

#[derive(Debug, Serialize, Deserialize, Default)]
pub struct Disks {
    #[serde(rename = "disk", default)]
    pub disk: Vec<SnapshotDisk>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotDisk {
    #[serde(rename = "@name")]
    pub name: String,
    #[serde(rename = "@snapshot")]
    pub snapshot: String,
}

/// The parts of libvirt's snapshot description project-vm reports.
#[derive(Debug, Deserialize)]
pub struct SnapshotInfo {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// The domain's state when the snapshot was taken (`running`, `shutoff`).
    #[serde(default)]
    pub state: String,
    #[serde(rename = "creationTime", default)]
    pub creation_time: u64,
    #[serde(default)]
    pub memory: Option<Mode>,
    #[serde(default)]
    pub disks: Disks,
}

impl NewSnapshot {
    pub fn to_xml(&self) -> String {
        quick_xml::se::to_string(self).expect("snapshot model serializes")
    }
}

impl SnapshotInfo {
    pub fn parse(xml: &str) -> anyhow::Result<SnapshotInfo> {
        quick_xml::de::from_str(xml).map_err(|e| anyhow::anyhow!("unreadable snapshot description: {e}"))
    }

    /// The disks it covers (`internal` ones).
    pub fn covered(&self) -> Vec<String> {
        self.disks.disk.iter().filter(|d| d.snapshot != "no").map(|d| d.name.clone()).collect()
    }

    pub fn has_memory(&self) -> bool {
        self.memory.as_ref().is_some_and(|m| m.snapshot != "no")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reads() {
        let xml = NewSnapshot {
            name: "snap-1".into(),
            description: Some("before <upgrade>".into()),
            memory: Mode { snapshot: "internal".into() },
            disks: Disks {
                disk: vec![
                    SnapshotDisk { name: "vda".into(), snapshot: "internal".into() },
                    SnapshotDisk { name: "sda".into(), snapshot: "no".into() },
                ],
            },
        }
        .to_xml();
        assert!(xml.contains(r#"<memory snapshot="internal"/>"#) && xml.contains("&lt;upgrade&gt;"), "{xml}");
        let libvirt = r#"<domainsnapshot><name>snap-1</name><description>d</description><state>running</state>
            <creationTime>1763900000</creationTime><memory snapshot='internal'/>
            <disks><disk name='vda' snapshot='internal'/><disk name='vdb' snapshot='internal'/><disk name='sda' snapshot='no'/></disks>
            <domain type='qemu'><name>project-x</name></domain></domainsnapshot>"#;
        let info = SnapshotInfo::parse(libvirt).unwrap();
        assert_eq!((info.state.as_str(), info.creation_time, info.has_memory()), ("running", 1763900000, true));
        assert_eq!(info.covered(), vec!["vda", "vdb"]);
    }
}
