//! The images layer's failures: an image that is unsafe or unreadable, one
//! that cannot be fetched, a pool without room for it.

use crate::error::{Classified, Kind};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image's own contents are refused (a backing file, an external data
    /// file, a table pointing outside the file, ...).
    #[error("image {image} is refused: {why}")]
    Unsafe { image: String, why: String },
    /// Its checksum is not what was asked for.
    #[error("image {image}: {algo} is {got}, expected {want}")]
    ChecksumMismatch { image: String, algo: String, got: String, want: String },
    /// The pool has no room for it.
    #[error("pool {pool} has {free} bytes free; image {image} needs {need}")]
    NoRoom { pool: String, image: String, need: u64, free: u64 },
    /// Fetching it failed (the network, the server, a file that is not there).
    #[error("{0}")]
    Fetch(String),
    /// Bad input about an image (a name, a URL, a checksum's spelling).
    #[error("{0}")]
    Invalid(String),
}

impl Classified for Error {
    fn kind(&self) -> Kind {
        match self {
            Error::Unsafe { .. } | Error::ChecksumMismatch { .. } | Error::Invalid(_) => Kind::Invalid,
            Error::NoRoom { .. } | Error::Fetch(_) => Kind::Environment,
        }
    }
}
