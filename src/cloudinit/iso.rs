//! Writes the NoCloud seed ISO in-process: ISO 9660 with Joliet and Rock Ridge,
//! volume id `cidata`, lowercase file names (what cloud-init looks for).

use std::io::Cursor;

use hadris_iso::read::PathSeparator;
use hadris_iso::write::options::{BaseIsoLevel, CreationFeatures, IsoFormatOptions};
use hadris_iso::write::{InputEntry, InputTree, IsoImageWriter};

use super::Seed;

pub const VOLUME_ID: &str = "cidata";

pub fn build(seed: &Seed) -> anyhow::Result<Vec<u8>> {
    let entries = vec![
        InputEntry::file("user-data", seed.user_data.clone().into_bytes()),
        InputEntry::file("meta-data", seed.meta_data.clone().into_bytes()),
        InputEntry::file("network-config", seed.network_config.clone().into_bytes()),
    ];
    let tree = InputTree::new(PathSeparator::ForwardSlash, entries);
    let mut features = CreationFeatures::extensions();
    features.filenames = BaseIsoLevel::Level2 { supports_lowercase: true, supports_rrip: true };
    let options = IsoFormatOptions {
        volume_name: VOLUME_ID.into(),
        system_id: None,
        volume_set_id: None,
        publisher_id: None,
        preparer_id: None,
        application_id: Some("project-vm".into()),
        sector_size: 2048,
        path_separator: PathSeparator::ForwardSlash,
        strict_charset: false,
        features,
    };
    let out = IsoImageWriter::create(Cursor::new(Vec::new()), tree, options)
        .map_err(|e| anyhow::anyhow!("writing the cloud-init seed ISO: {e:?}"))?;
    Ok(out.into_inner())
}
