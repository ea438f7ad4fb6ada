//! What a share source really exposes on this host, through bind mounts:
//! `/proc/self/mountinfo` says, for each mount, which filesystem (device)
//! it is and which directory of that filesystem (`root`) it shows. A
//! protected directory reached through another mount point is still that
//! directory, and is refused like it.

use std::path::{Path, PathBuf};

/// At most this much of mountinfo is read: a host with more mounts than fit
/// cannot be checked, and its shares are refused.
pub const MOUNTINFO_MAX: u64 = 8 << 20;

/// One line of mountinfo: the device (`major:minor`), the directory of that
/// filesystem the mount shows, and where it is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub device: String,
    pub root: PathBuf,
    pub point: PathBuf,
}

/// mountinfo's octal escapes (`\040` for a space, `\134` for `\`).
fn unescape(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b.get(i + 1..i + 4).filter(|o| o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(o)) => {
                out.push(((o[0] - b'0') << 6) | ((o[1] - b'0') << 3) | (o[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// The mounts in mountinfo's text, in its order (later ones stack on
/// earlier ones at the same point).
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (_id, _parent, device, root, point) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
            Some(Mount { device: device.to_owned(), root: unescape(root), point: unescape(point) })
        })
        .collect()
}

/// This process's mounts, read bounded.
pub fn read() -> anyhow::Result<Vec<Mount>> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open("/proc/self/mountinfo")
        .and_then(|f| f.take(MOUNTINFO_MAX + 1).read_to_string(&mut text))
        .map_err(|e| anyhow::anyhow!("reading /proc/self/mountinfo: {e}"))?;
    if text.len() as u64 > MOUNTINFO_MAX {
        anyhow::bail!(
            "/proc/self/mountinfo is larger than {MOUNTINFO_MAX} bytes: too many mounts to check shares against"
        );
    }
    Ok(parse(&text))
}

/// Where `path` (absolute, symlinks resolved) is on its filesystem: the
/// device of the mount that holds it and the directory of that filesystem.
pub fn exposed(mounts: &[Mount], path: &Path) -> Option<(String, PathBuf)> {
    // The deepest mount point above `path`; of those at one point, the last (on top).
    let m = mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| path.starts_with(&m.point))
        .max_by_key(|(i, m)| (m.point.components().count(), *i))?
        .1;
    let rest = path.strip_prefix(&m.point).ok()?;
    Some((m.device.clone(), if rest.as_os_str().is_empty() { m.root.clone() } else { m.root.join(rest) }))
}

/// Why sharing `source` would expose one of `protected` (absolute paths,
/// symlinks resolved) by another way in: the filesystem directory its mount
/// shows is, lies in or contains a protected directory's on the same
/// device, or a mount below the source shows one.
pub fn clash(mounts: &[Mount], source: &Path, protected: &[PathBuf]) -> Option<String> {
    let guarded: Vec<(&PathBuf, String, PathBuf)> =
        protected.iter().filter_map(|p| exposed(mounts, p).map(|(d, r)| (p, d, r))).collect();
    let hits = |device: &str, dir: &Path| {
        guarded
            .iter()
            .find(|(_, d, r)| d == device && (dir.starts_with(r) || r.starts_with(dir)))
            .map(|(p, _, _)| (*p).clone())
    };
    if let Some((device, dir)) = exposed(mounts, source) {
        if let Some(p) = hits(&device, &dir) {
            return Some(format!(
                "the source {} shows {} of device {device}, which is, lies in or contains {} (a bind mount or another mount of it)",
                source.display(),
                dir.display(),
                p.display()
            ));
        }
    }
    for m in mounts.iter().filter(|m| m.point != source && m.point.starts_with(source)) {
        if let Some(p) = hits(&m.device, &m.root) {
            return Some(format!(
                "{} below the source {} is a mount of {} of device {}, which is, lies in or contains {}; virtiofs would show it to the guest",
                m.point.display(),
                source.display(),
                m.root.display(),
                m.device,
                p.display()
            ));
        }
    }
    None
}

/// The same directory by device and inode as a protected one, or inside
/// one: `source` or one of its parents is a protected directory.
pub fn same_inode(source: &Path, protected: &[PathBuf]) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let ids: Vec<((u64, u64), &PathBuf)> =
        protected.iter().filter_map(|p| std::fs::metadata(p).ok().map(|m| ((m.dev(), m.ino()), p))).collect();
    source.ancestors().find_map(|a| {
        let m = std::fs::metadata(a).ok()?;
        ids.iter().find(|(id, _)| *id == (m.dev(), m.ino())).map(|(_, p)| (*p).clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:21 / /proc rw,nosuid shared:2 - proc proc rw
24 22 0:25 / /run rw,nosuid shared:3 - tmpfs tmpfs rw
25 22 0:30 / /tmp rw shared:4 - tmpfs tmpfs rw
60 25 8:1 /etc /tmp/x/bindetc rw,relatime shared:1 - ext4 /dev/sda1 rw
61 25 8:1 /etc/ssh /tmp/x/bind\\040ssh rw,relatime shared:1 - ext4 /dev/sda1 rw
62 25 0:30 /pv/pool /tmp/x/bindpool rw shared:4 - tmpfs tmpfs rw
63 25 8:1 /srv/data /tmp/x/data rw shared:1 - ext4 /dev/sda1 rw
64 63 0:21 / /tmp/x/data/p rw shared:2 - proc proc rw
65 25 8:1 /srv/other /tmp/x/other rw shared:1 - ext4 /dev/sda1 rw
";

    fn protected() -> Vec<PathBuf> {
        ["/etc", "/proc", "/run", "/var/lib", "/tmp/pv/pool"].iter().map(PathBuf::from).collect()
    }

    #[test]
    fn mountinfo_lines_parse_with_their_escapes() {
        let m = parse(INFO);
        assert_eq!(m.len(), 10);
        assert_eq!(m[5].point, PathBuf::from("/tmp/x/bind ssh"));
        assert_eq!(m[5].root, PathBuf::from("/etc/ssh"));
        assert_eq!(m[4].device, "8:1");
    }

    #[test]
    fn a_path_maps_back_to_what_its_mount_shows() {
        let m = parse(INFO);
        assert_eq!(exposed(&m, Path::new("/tmp/x/bindetc/ssh")), Some(("8:1".into(), "/etc/ssh".into())));
        assert_eq!(exposed(&m, Path::new("/tmp/pv/pool")), Some(("0:30".into(), "/pv/pool".into())));
        assert_eq!(exposed(&m, Path::new("/srv")), Some(("8:1".into(), "/srv".into())));
    }

    #[test]
    fn bind_mounts_of_protected_directories_are_refused() {
        let m = parse(INFO);
        let p = protected();
        for (bad, says) in [
            ("/tmp/x/bindetc", "/etc"),
            ("/tmp/x/bindetc/ssh", "/etc"),
            ("/tmp/x/bind ssh", "/etc"),
            ("/tmp/x/bindpool", "/tmp/pv/pool"),
            ("/tmp/x/bindpool/sub", "/tmp/pv/pool"),
            ("/tmp/x/data", "/proc"),
            ("/tmp/x", "/etc"),
        ] {
            let why = clash(&m, Path::new(bad), &p).unwrap_or_else(|| panic!("{bad} was let through"));
            assert!(why.contains(says), "{bad}: {why}");
        }
        for ok in ["/tmp/x/other", "/srv/other", "/tmp/other", "/home/u/src"] {
            assert_eq!(clash(&m, Path::new(ok), &p), None, "{ok}");
        }
    }

    #[test]
    fn the_same_inode_as_a_protected_directory_is_found() {
        let p = vec![PathBuf::from("/etc")];
        assert_eq!(same_inode(Path::new("/etc"), &p), Some(PathBuf::from("/etc")));
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(same_inode(dir.path(), &p), None);
    }
}
