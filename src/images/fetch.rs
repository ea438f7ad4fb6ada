//! Reading an image or a checksum file from where it lives: `http(s)://`
//! through ureq, `file://` and plain paths from the local filesystem.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use super::Error;

/// An open source of bytes of known length (libvirt's upload wants the length first).
pub struct Download {
    pub len: u64,
    pub reader: Box<dyn Read + Send>,
    /// A local file, for the image check to read its tables before the upload.
    pub local: Option<File>,
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
            Error::Fetch(format!("cannot download {location}: the server answered HTTP {code}")).into()
        }
        other => Error::Fetch(format!("cannot download {location}: {other}")).into(),
    }
}

/// Only these schemes are fetched; any other (`ftp://`, say) is bad input.
fn check_scheme(location: &str) -> anyhow::Result<()> {
    match location.split_once("://") {
        Some(("http" | "https" | "file", _)) | None => Ok(()),
        Some((scheme, _)) => Err(Error::Invalid(format!(
            "{location}: {scheme}:// is not supported: images and checksum files come from https://, http://, file:// or a path"
        ))
        .into()),
    }
}

pub fn open(location: &str) -> anyhow::Result<Download> {
    check_scheme(location)?;
    if let Some(path) = local_path(location) {
        // Opened without blocking and refused unless a regular file: a FIFO never hangs the import.
        let file = crate::files::open_regular(&path, "image file")?;
        let len = file.metadata()?.len();
        let local = file.try_clone().ok();
        return Ok(Download { len, reader: Box::new(file), local });
    }
    tracing::info!(url = location, "downloading");
    let resp = agent().get(location).call().map_err(|e| http_error(location, e))?;
    let len = resp.body().content_length().ok_or_else(|| {
        Error::Fetch(format!(
            "{location}: the server sent no Content-Length, so the download cannot be checked for completeness"
        ))
    })?;
    let (_, body) = resp.into_parts();
    Ok(Download { len, reader: Box::new(body.into_reader()), local: None })
}

/// What a cheap look at `location` found, for `plan`: `Ok(Ok(()))` it
/// answers (a local file exists and is a regular file, a server answers the
/// HEAD request with success); `Ok(Err(why))` it certainly cannot be had (an
/// unsupported scheme, an HTTP error status such as 404); `Err(why)` it
/// could not be checked (the server did not answer): the caller says so.
pub fn probe(location: &str) -> Result<Result<(), String>, String> {
    if let Err(e) = check_scheme(location) {
        return Ok(Err(e.to_string()));
    }
    if let Some(path) = local_path(location) {
        return Ok(crate::files::open_regular(&path, "image file").map(|_| ()).map_err(|e| e.to_string()));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(15)))
        .user_agent(concat!("project-vm/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let status = |r: Result<ureq::http::Response<ureq::Body>, ureq::Error>| match r {
        Ok(_) => Ok(None),
        Err(ureq::Error::StatusCode(code)) => Ok(Some(code)),
        Err(e) => Err(format!("could not check {location}: {e}")),
    };
    let code = match status(agent.head(location).call())? {
        // A server that does not do HEAD: ask for the body and hang up after the headers.
        Some(405 | 501) => status(agent.get(location).call())?,
        other => other,
    };
    Ok(match code {
        None => Ok(()),
        Some(code) => Err(format!("{location} answered HTTP {code}: it cannot be downloaded")),
    })
}

/// A small text file (a checksum list), at most 4 MiB.
pub fn text(location: &str) -> anyhow::Result<String> {
    check_scheme(location)?;
    let mut out = String::new();
    if let Some(path) = local_path(location) {
        return crate::files::read_text(&path, "checksum file", crate::files::SUMS_MAX);
    }
    let mut resp = agent().get(location).call().map_err(|e| http_error(location, e))?;
    resp.body_mut()
        .with_config()
        .limit(4 << 20)
        .reader()
        .read_to_string(&mut out)
        .map_err(|e| Error::Fetch(format!("cannot download {location}: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsupported_scheme_is_invalid_and_a_missing_server_a_fetch_failure() {
        let e = check_scheme("ftp://example.invalid/x.qcow2").unwrap_err();
        assert!(matches!(e.downcast_ref::<Error>(), Some(Error::Invalid(_))), "{e:#}");
        assert_eq!(crate::exit::code(&e), 2);
        check_scheme("https://example.invalid/x.qcow2").unwrap();
        check_scheme("/var/tmp/x.qcow2").unwrap();
        let e = http_error("https://example.invalid/x", ureq::Error::StatusCode(404));
        assert!(matches!(e.downcast_ref::<Error>(), Some(Error::Fetch(m)) if m.contains("HTTP 404")), "{e:#}");
        assert_eq!(crate::exit::code(&e), 4);
    }
}
