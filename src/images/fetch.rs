//! Reading an image or a checksum file from where it lives: `http(s)://`
//! through ureq, `file://` and plain paths from the local filesystem.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{failure, invalid, Kind};

/// An open source of bytes of known length (libvirt's upload wants the length first).
pub struct Download {
    pub len: u64,
    pub reader: Box<dyn Read + Send>,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        // A server that stops sending fails the pull instead of hanging it.
        .timeout_per_read(Some(Duration::from_secs(60)))
        .user_agent(concat!("project-vm/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

fn local_path(location: &str) -> Option<PathBuf> {
    if let Some(p) = location.strip_prefix("file://") {
        return Some(PathBuf::from(p));
    }
    (!location.contains("://")).then(|| PathBuf::from(location))
}

fn http_error(location: &str, e: ureq::Error) -> anyhow::Error {
    match e {
        ureq::Error::StatusCode(code) => {
            failure(Kind::Environment, format!("cannot download {location}: the server answered HTTP {code}"))
        }
        other => failure(Kind::Environment, format!("cannot download {location}: {other}")),
    }
}

pub fn open(location: &str) -> anyhow::Result<Download> {
    if let Some(path) = local_path(location) {
        let file = File::open(&path).map_err(|e| invalid(format!("cannot open image file {}: {e}", path.display())))?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(invalid(format!("{} is not a file", path.display())));
        }
        return Ok(Download { len: meta.len(), reader: Box::new(file) });
    }
    tracing::info!(url = location, "downloading");
    let resp = agent().get(location).call().map_err(|e| http_error(location, e))?;
    let len = resp.body().content_length().ok_or_else(|| {
        failure(
            Kind::Environment,
            format!(
                "{location}: the server sent no Content-Length, so the download cannot be checked for completeness"
            ),
        )
    })?;
    let (_, body) = resp.into_parts();
    Ok(Download { len, reader: Box::new(body.into_reader()) })
}

/// A small text file (a checksum list), at most 4 MiB.
pub fn text(location: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    if let Some(path) = local_path(location) {
        File::open(&path)
            .and_then(|f| f.take(4 << 20).read_to_string(&mut out))
            .map_err(|e| invalid(format!("cannot read checksum file {}: {e}", path.display())))?;
        return Ok(out);
    }
    let mut resp = agent().get(location).call().map_err(|e| http_error(location, e))?;
    resp.body_mut()
        .with_config()
        .limit(4 << 20)
        .reader()
        .read_to_string(&mut out)
        .map_err(|e| failure(Kind::Environment, format!("cannot download {location}: {e}")))?;
    Ok(out)
}
