//! The guest's ssh host key, generated on the host at create so the public key
//! is known (and pinned) before the guest first boots.

use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, LineEnding, PrivateKey};

pub struct HostKey {
    pub private_openssh: String,
    pub public_openssh: String,
}

impl HostKey {
    pub fn generate(comment: &str) -> anyhow::Result<HostKey> {
        let mut key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)?;
        key.set_comment(comment);
        Ok(HostKey {
            private_openssh: key.to_openssh(LineEnding::LF)?.to_string(),
            public_openssh: key.public_key().to_openssh()?,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn generates_distinct_ed25519_keys() {
        let a = super::HostKey::generate("project-a").unwrap();
        let b = super::HostKey::generate("project-a").unwrap();
        assert!(a.public_openssh.starts_with("ssh-ed25519 "));
        assert!(a.public_openssh.ends_with(" project-a"));
        assert_ne!(a.public_openssh, b.public_openssh);
    }
}
