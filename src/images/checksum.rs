//! Image checksums: `sha256:HEX` / `sha512:HEX`, the checksum files
//! distributions publish next to their images, and hashing while streaming.

use std::fmt;
use std::io::Read;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    Sha256,
    Sha512,
}

impl Algo {
    fn name(self) -> &'static str {
        match self {
            Algo::Sha256 => "sha256",
            Algo::Sha512 => "sha512",
        }
    }
    fn hex_len(self) -> usize {
        match self {
            Algo::Sha256 => 64,
            Algo::Sha512 => 128,
        }
    }
}

/// Why a checksum's spelling is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadChecksum {
    #[error("checksum {0:?} is not ALGO:HEX: write it as sha256:HEX or sha512:HEX")]
    NotAlgoHex(String),
    #[error("checksum algorithm {0:?} is not supported: use sha256 or sha512")]
    UnknownAlgo(String),
    #[error("checksum {given:?}: a {} digest is {} hexadecimal digits", .algo.name(), .algo.hex_len())]
    BadDigest { given: String, algo: Algo },
}

/// A digest with its algorithm, written `sha256:HEX` (lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Checksum {
    pub algo: Algo,
    pub hex: String,
}

impl Checksum {
    pub fn parse(s: &str) -> Result<Checksum, BadChecksum> {
        let (algo, hex) = s.split_once(':').ok_or_else(|| BadChecksum::NotAlgoHex(s.into()))?;
        let algo = match algo.to_ascii_lowercase().as_str() {
            "sha256" => Algo::Sha256,
            "sha512" => Algo::Sha512,
            other => return Err(BadChecksum::UnknownAlgo(other.into())),
        };
        Checksum::of_hex(algo, hex).ok_or_else(|| BadChecksum::BadDigest { given: s.into(), algo })
    }

    fn of_hex(algo: Algo, hex: &str) -> Option<Checksum> {
        (hex.len() == algo.hex_len() && hex.chars().all(|c| c.is_ascii_hexdigit()))
            .then(|| Checksum { algo, hex: hex.to_ascii_lowercase() })
    }

    /// The algorithm a bare hex digest implies by its length.
    fn guess(hex: &str) -> Option<Checksum> {
        [Algo::Sha256, Algo::Sha512].into_iter().find_map(|a| Checksum::of_hex(a, hex))
    }

    /// `sha512:0123456789ab…`, for tables.
    pub fn short(&self) -> String {
        format!("{}:{}…", self.algo.name(), &self.hex[..12])
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algo.name(), self.hex)
    }
}

impl TryFrom<String> for Checksum {
    type Error = BadChecksum;
    fn try_from(s: String) -> Result<Self, BadChecksum> {
        Checksum::parse(&s)
    }
}

impl From<Checksum> for String {
    fn from(c: Checksum) -> String {
        c.to_string()
    }
}

impl std::str::FromStr for Checksum {
    type Err = BadChecksum;
    fn from_str(s: &str) -> Result<Self, BadChecksum> {
        Checksum::parse(s)
    }
}

/// `file`'s digest in a checksum file. Reads both styles distributions use:
/// GNU (`HEX  NAME`, `HEX *NAME`: Debian's SHA512SUMS, Ubuntu's SHA256SUMS) and
/// BSD (`SHA256 (NAME) = HEX`: Fedora's CHECKSUM).
pub fn find_in_sums(text: &str, file: &str) -> Option<Checksum> {
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("SHA256 (").or_else(|| line.strip_prefix("SHA512 (")) {
            if let Some((name, hex)) = rest.split_once(") = ") {
                if name == file {
                    return Checksum::guess(hex.trim());
                }
            }
            continue;
        }
        let mut parts = line.splitn(2, char::is_whitespace);
        let (Some(hex), Some(name)) = (parts.next(), parts.next()) else { continue };
        let name = name.trim_start();
        let name = name.strip_prefix('*').unwrap_or(name);
        if name == file || name.strip_prefix("./") == Some(file) {
            return Checksum::guess(hex);
        }
    }
    None
}

/// A running digest.
pub enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub fn new(algo: Algo) -> Hasher {
        match algo {
            Algo::Sha256 => Hasher::Sha256(Sha256::new()),
            Algo::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }
    pub fn finish(self) -> Checksum {
        match self {
            Hasher::Sha256(h) => Checksum { algo: Algo::Sha256, hex: hex::encode(h.finalize()) },
            Hasher::Sha512(h) => Checksum { algo: Algo::Sha512, hex: hex::encode(h.finalize()) },
        }
    }
}

/// Hashes and counts what passes through; `on_read` sees the running total
/// (progress) and may stop the stream (Ctrl-C) by returning an error.
pub struct HashingReader<R, F> {
    inner: R,
    hasher: Hasher,
    pub bytes: u64,
    on_read: F,
}

impl<R: Read, F: FnMut(u64) -> std::io::Result<()>> HashingReader<R, F> {
    pub fn new(inner: R, algo: Algo, on_read: F) -> Self {
        HashingReader { inner, hasher: Hasher::new(algo), bytes: 0, on_read }
    }
    pub fn finish(self) -> (Checksum, u64) {
        (self.hasher.finish(), self.bytes)
    }
}

impl<R: Read, F: FnMut(u64) -> std::io::Result<()>> Read for HashingReader<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        (self.on_read)(self.bytes)?;
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn parses_and_rejects() {
        let c = Checksum::parse(&format!("SHA256:{}", ABC256.to_uppercase())).unwrap();
        assert_eq!(c.to_string(), format!("sha256:{ABC256}"));
        assert_eq!(c.short(), "sha256:ba7816bf8f01…");
        assert_eq!(Checksum::parse(ABC256), Err(BadChecksum::NotAlgoHex(ABC256.into())));
        assert_eq!(Checksum::parse("md5:abc"), Err(BadChecksum::UnknownAlgo("md5".into())));
        let short = Checksum::parse("sha512:abc").unwrap_err();
        assert_eq!(short, BadChecksum::BadDigest { given: "sha512:abc".into(), algo: Algo::Sha512 });
        // The message names the fix.
        assert!(short.to_string().contains("128 hexadecimal"), "{short}");
    }

    #[test]
    fn finds_entries_in_both_sum_styles() {
        let gnu = format!("{}  other.qcow2\n{ABC256} *debian-13-genericcloud-amd64.qcow2\n", "0".repeat(64));
        assert_eq!(find_in_sums(&gnu, "debian-13-genericcloud-amd64.qcow2").unwrap().hex, ABC256);
        assert_eq!(find_in_sums(&gnu, "other.qcow2").unwrap().hex, "0".repeat(64));
        assert!(find_in_sums(&gnu, "missing.qcow2").is_none());
        let bsd = format!("# comment\nSHA256 (Fedora.qcow2) = {ABC256}\n");
        assert_eq!(find_in_sums(&bsd, "Fedora.qcow2").unwrap().algo, Algo::Sha256);
        let sha512 = format!("{}  img\n", "a".repeat(128));
        assert_eq!(find_in_sums(&sha512, "img").unwrap().algo, Algo::Sha512);
    }

    #[test]
    fn hashes_while_reading() {
        let mut r = HashingReader::new(&b"abc"[..], Algo::Sha256, |_| Ok(()));
        std::io::copy(&mut r, &mut std::io::sink()).unwrap();
        let (sum, n) = r.finish();
        assert_eq!((sum.hex.as_str(), n), (ABC256, 3));
    }
}
