//! The per-user secret that authenticates what project-vm leaves in a pool
//! (kept-disk markers): 32 random bytes, 0600, in a directory of this user's
//! own outside every pool. Anyone who can write the pool can write a marker,
//! but not one whose MAC verifies without this file.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::error::ConfigError;

const LEN: usize = 32;

/// Where the secret lives: `$XDG_STATE_HOME/project-vm/secret`; else, for
/// root, `/var/lib/project-vm-state/secret` (not `/var/lib/project-vm`: that
/// is the system daemon's default pool directory, and a file there would be
/// a volume anyone with the pool can download); else
/// `~/.local/state/project-vm/secret`.
pub fn path() -> anyhow::Result<PathBuf> {
    let dir = match crate::paths::var("XDG_STATE_HOME") {
        Some(d) => d.join("project-vm"),
        None if nix::unistd::geteuid().is_root() => PathBuf::from("/var/lib/project-vm-state"),
        None => crate::paths::state_home().map(|d| d.join("project-vm")).ok_or_else(|| {
            ConfigError::Environment("neither XDG_STATE_HOME nor HOME is set: no place for project-vm's secret".into())
        })?,
    };
    Ok(dir.join("secret"))
}

/// The secret, made on first use.
pub fn load() -> anyhow::Result<[u8; LEN]> {
    load_at(&path()?)
}

fn env_err(p: &Path, what: impl std::fmt::Display) -> anyhow::Error {
    ConfigError::Environment(format!("project-vm's secret {}: {what}", p.display())).into()
}

/// The secret at `p`, made (0600, its directory 0700) if it is not there.
pub fn load_at(p: &Path) -> anyhow::Result<[u8; LEN]> {
    let dir = p.parent().ok_or_else(|| env_err(p, "has no directory"))?;
    crate::lock::secure_dir_for(dir, dir, "directory of project-vm's secret", "XDG_STATE_HOME")?;
    if std::fs::symlink_metadata(p).is_err() {
        // Written whole under another name, then linked: a concurrent
        // reader never sees half a secret, and the first link wins.
        let tmp = dir.join(format!(".secret.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut key = [0u8; LEN];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut r| r.read_exact(&mut key))
            .map_err(|e| env_err(p, format!("cannot read /dev/urandom: {e}")))?;
        let mut f = crate::files::create_new_private(&tmp).map_err(|e| env_err(p, format!("cannot create it: {e}")))?;
        f.write_all(&key).and_then(|()| f.sync_all()).map_err(|e| env_err(p, format!("cannot write it: {e}")))?;
        drop(f);
        let linked = std::fs::hard_link(&tmp, p);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(env_err(p, format!("cannot create it: {e}"))),
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK)
        .open(p)
        .map_err(|e| env_err(p, format!("cannot open it (a symlink is refused): {e}")))?;
    let m = f.metadata().map_err(|e| env_err(p, e))?;
    let uid = nix::unistd::geteuid().as_raw();
    if !m.is_file() || m.uid() != uid || m.mode() & 0o077 != 0 || m.len() != LEN as u64 {
        return Err(env_err(
            p,
            format!(
                "is not a {LEN}-byte file of yours (uid {uid}) that only you can read (it has mode {:o}, uid {}, {} bytes); remove it and project-vm makes a new one (markers it wrote before then no longer verify)",
                m.mode() & 0o7777,
                m.uid(),
                m.len()
            ),
        ));
    }
    let mut key = [0u8; LEN];
    f.read_exact(&mut key).map_err(|e| env_err(p, format!("cannot read it: {e}")))?;
    Ok(key)
}

/// HMAC-SHA256 of `msg` under `key`, as hex.
pub fn mac(key: &[u8], msg: &[u8]) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg);
    hex::encode(m.finalize().into_bytes())
}

/// Whether `tag` (hex) is `msg`'s MAC under `key`, compared in constant time.
pub fn verify(key: &[u8], msg: &[u8], tag: &str) -> bool {
    let Ok(tag) = hex::decode(tag) else { return false };
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg);
    m.verify_slice(&tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_made_once_private_and_never_through_a_symlink() {
        let top = std::env::temp_dir().join(format!("pv-secret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        std::fs::create_dir_all(&top).unwrap();
        let p = top.join("state/secret");
        let a = load_at(&p).unwrap();
        assert_eq!(load_at(&p).unwrap(), a);
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        let link = top.join("link/secret");
        std::fs::create_dir_all(top.join("link")).unwrap();
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(load_at(&link).is_err(), "a symlinked secret is refused");
        std::os::unix::fs::symlink(top.join("state"), top.join("dirlink")).unwrap();
        let err = load_at(&top.join("dirlink/secret")).unwrap_err();
        assert!(format!("{err:#}").contains("symlink"), "a symlinked directory is refused: {err:#}");
        let tag = mac(&a, b"msg");
        assert!(verify(&a, b"msg", &tag));
        assert!(!verify(&a, b"msh", &tag));
        assert!(!verify(&[0; 32], b"msg", &tag));
        assert!(!verify(&a, b"msg", "zz"));
        std::fs::remove_dir_all(&top).unwrap();
    }
}
