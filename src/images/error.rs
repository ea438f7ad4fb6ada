//! The images layer's failures: an image that is unsafe or unreadable, one
//! that cannot be fetched, a pool without room for it.

use super::checksum::Checksum;
use super::inspect::Refusal;
use crate::error::{Classified, Kind};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image's own contents are refused (a backing file, an external data
    /// file, a table pointing outside the file, ...): `image` names it (a
    /// file, a URL, a volume), `then` says what became of it (`; nothing was
    /// stored`), or is empty.
    #[error("{image} cannot be a base image: {why}{then}")]
    Unsafe { image: String, why: Refusal, then: String },
    /// Its checksum is not what was asked for: a damaged or changed download
    /// (exit 4), discarded.
    #[error("{image}: checksum mismatch: expected {want}, got {got}; the download was discarded")]
    ChecksumMismatch { image: String, want: Checksum, got: Checksum },
    /// The pool has no room for it; nothing was uploaded.
    #[error(
        "not enough space in pool {pool} for image {image}: it needs {} ({need} bytes) and {} ({free} bytes) are free; nothing was uploaded",
        crate::output::human(*.need),
        crate::output::human(*.free)
    )]
    NoRoom { pool: String, image: String, need: u64, free: u64 },
    /// Fetching it failed (the network, the server, a file that is not there).
    #[error("{0}")]
    Fetch(String),
    /// Its bytes could not be read (a local file, a volume read back through libvirt).
    #[error("reading {what}: {why}")]
    Unreadable { what: String, why: String },
    /// A stored image is not what its record says (changed or removed since it was verified).
    #[error("{0}")]
    Changed(String),
    /// Bad input about an image (a name, a URL, a checksum's spelling).
    #[error("{0}")]
    Invalid(String),
}

impl Classified for Error {
    fn kind(&self) -> Kind {
        match self {
            Error::Unsafe { .. } | Error::Changed(_) | Error::Invalid(_) => Kind::Invalid,
            Error::ChecksumMismatch { .. } | Error::NoRoom { .. } | Error::Fetch(_) | Error::Unreadable { .. } => {
                Kind::Environment
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_case_has_its_exit_code() {
        let sum = |c: char| Checksum::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap();
        let unsafe_ = Error::Unsafe { image: "x.qcow2".into(), why: Refusal::Encrypted, then: String::new() };
        assert_eq!(unsafe_.kind(), Kind::Invalid);
        assert!(unsafe_.to_string().starts_with("x.qcow2 cannot be a base image: it is an encrypted qcow2"));
        let mismatch = Error::ChecksumMismatch { image: "u".into(), want: sum('0'), got: sum('1') };
        assert_eq!(mismatch.kind(), Kind::Environment);
        assert!(mismatch.to_string().contains("checksum mismatch"));
        let room = Error::NoRoom { pool: "p".into(), image: "i".into(), need: 10, free: 5 };
        assert_eq!(crate::exit::code(&room.into()), 4);
    }
}
