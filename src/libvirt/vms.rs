//! Finding project-vm's VMs. A domain counts as a VM only when it carries
//! project-vm's ownership metadata; everything else is somebody else's.

use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::ErrorNumber;

use super::errors::Error;
use super::metadata::Ownership;
pub use super::state::State;
use super::{explain_on, is};
use crate::spec::{VmName, VmSpec, DOMAIN_PREFIX};

/// A domain with project-vm's record.
pub struct Vm {
    pub name: VmName,
    pub dom: Domain,
    pub own: Ownership,
}

/// What a name refers to.
pub enum Lookup {
    Absent,
    /// A domain of that name exists without project-vm's metadata, or with
    /// a record that belongs to another domain (the reason).
    Foreign(Option<String>),
    Owned(Box<Vm>),
}

impl Vm {
    pub fn state(&self) -> State {
        State::of(&self.dom)
    }

    pub fn spec(&self) -> anyhow::Result<VmSpec> {
        self.own.spec()
    }
}

pub fn lookup(conn: &Connect, name: &VmName) -> anyhow::Result<Lookup> {
    let dom = match conn.lookup_domain_by_name(&name.domain()) {
        Ok(d) => d,
        Err(e) if is(&e, ErrorNumber::NoDomain) => return Ok(Lookup::Absent),
        Err(e) => return Err(explain_on(conn, e, format!("looking up domain {}", name.domain()))),
    };
    let read = match Ownership::read(&dom) {
        Err(e) => match e.downcast_ref::<super::metadata::Unreadable>() {
            // Hand-written or foreign: not ours, and never touched.
            Some(u) => return Ok(Lookup::Foreign(Some(format!("it cannot be read ({u})")))),
            None => return Err(e),
        },
        Ok(r) => r,
    };
    Ok(match read {
        Some(own) => match own.mismatch(&name.domain(), &dom.uuid_string().unwrap_or_default()) {
            None => Lookup::Owned(Box::new(Vm { name: name.clone(), dom, own })),
            Some(why) => Lookup::Foreign(Some(why)),
        },
        None => Lookup::Foreign(None),
    })
}

/// The VM called `name`, or an error that says why not.
pub fn get(conn: &Connect, name: &VmName) -> anyhow::Result<Vm> {
    match lookup(conn, name)? {
        Lookup::Owned(vm) => Ok(*vm),
        Lookup::Absent => Err(Error::NoSuchVm(format!(
            "no VM named {name} (no domain {}): see `project-vm list`, or create it with `project-vm create {name}`",
            name.domain()
        ))
        .into()),
        Lookup::Foreign(why) => Err(foreign(name, why.as_deref())),
    }
}

pub fn foreign(name: &VmName, why: Option<&str>) -> anyhow::Error {
    let why = why
        .map(|w| format!("its project-vm metadata is not its own: {w}"))
        .unwrap_or_else(|| "it has no project-vm metadata".into());
    Error::Foreign(format!(
        "domain {} exists but was not created by project-vm ({why}); \
         project-vm will not touch it. Pick another name, or remove it yourself with virsh if it is yours to remove",
        name.domain()
    ))
    .into()
}

/// Every project-vm VM on this connection, sorted by name.
///
/// One call lists the domains; each `project-` domain's record then costs
/// one more, and those are read on a few threads at once (libvirt's
/// connection carries concurrent calls, and the daemon answers them on its
/// worker pool), so a host with hundreds of VMs lists in tens of ms.
pub fn list(conn: &Connect) -> anyhow::Result<Vec<Vm>> {
    let doms = conn.list_all_domains(0).map_err(|e| explain_on(conn, e, "listing domains"))?;
    let candidates: Vec<(VmName, String, Domain)> = doms
        .into_iter()
        .filter_map(|dom| {
            let dname = dom.name().ok()?;
            let name = VmName::parse(dname.strip_prefix(DOMAIN_PREFIX)?).ok()?;
            Some((name, dname, dom))
        })
        .collect();
    let mut vms: Vec<Vm> = parallel(candidates, |(name, dname, dom)| owned(name, dname, dom))
        .map_err(|p| anyhow::Error::new(p).context("reading the records of project-vm's domains"))?
        .into_iter()
        .flatten()
        .collect();
    vms.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(vms)
}

/// The domain as a VM when its record is project-vm's and its own; a
/// domain skipped is said (a warning) unless it simply has no record.
fn owned(name: VmName, dname: String, dom: Domain) -> Option<Vm> {
    match Ownership::read(&dom) {
        Ok(Some(own)) => match own.mismatch(&dname, &dom.uuid_string().unwrap_or_default()) {
            None => Some(Vm { name, dom, own }),
            Some(why) => {
                crate::messages::warn(format!("skipping domain {dname}: {why}"));
                None
            }
        },
        Ok(None) => {
            tracing::debug!(domain = dname, "skipping domain without project-vm metadata");
            None
        }
        Err(e) => {
            crate::messages::warn(format!("skipping domain {dname}: {e:#}"));
            None
        }
    }
}

/// Domains whose calls run at once: a few cover the round-trip latency; more
/// only queue in the daemon.
const LANES: usize = 4;

/// `f` over `items` in up to [`LANES`] lanes at once ([`crate::fanout`]),
/// results in input order; small inputs are one lane. A lane that panics
/// fails the whole call, by choice: a listing that silently lacked some VMs
/// would let `image rm` remove an image in use, `create` reuse a VM's ssh
/// port, or `apply` create a VM that exists.
pub fn parallel<T, R, F>(items: Vec<T>, f: F) -> Result<Vec<R>, crate::fanout::Panicked>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> R + Send + Sync + 'static,
{
    let lanes = if items.len() < 16 { 1 } else { LANES };
    let per = items.len().div_ceil(lanes).max(1);
    let mut chunks: Vec<Vec<T>> = Vec::new();
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        chunks.push(items.by_ref().take(per).collect());
    }
    let done = crate::fanout::map(chunks, lanes, move |lane: Vec<T>| lane.into_iter().map(&f).collect::<Vec<R>>());
    done.into_iter().try_fold(Vec::new(), |mut all, lane| {
        all.extend(lane?);
        Ok(all)
    })
}

/// A VM with what bulk calls say of it: no call per VM beyond its record.
pub struct Surveyed {
    pub vm: Vm,
    pub state: State,
    pub vcpus: u32,
    /// Maximum memory, bytes.
    pub max_memory: u64,
    pub autostart: bool,
}

/// Every VM with its state, CPUs, memory and autostart, in three calls plus
/// one per VM (its record): see [`list`] and [`super::stats`].
pub fn survey(conn: &Connect) -> anyhow::Result<Vec<Surveyed>> {
    let vms = list(conn)?;
    let doms: Vec<&Domain> = vms.iter().map(|v| &v.dom).collect();
    let stats = super::stats::of(&doms)?;
    let autostart: std::collections::HashSet<String> = conn
        .list_all_domains(virt::sys::VIR_CONNECT_LIST_DOMAINS_AUTOSTART)
        .map_err(|e| explain_on(conn, e, "listing domains"))?
        .iter()
        .filter_map(|d| d.name().ok())
        .collect();
    Ok(vms
        .into_iter()
        .map(|vm| {
            let domain = vm.name.domain();
            let s = stats.get(&domain).copied().unwrap_or(super::stats::Stats {
                state: State::Other,
                vcpus: 0,
                max_memory: 0,
            });
            Surveyed {
                autostart: autostart.contains(&domain),
                state: s.state,
                vcpus: s.vcpus,
                max_memory: s.max_memory,
                vm,
            }
        })
        .collect())
}

/// The files and block devices domain XML's disks read, backing files given
/// in the XML included: `file` and `dev` sources as paths, `pool`/`volume`
/// sources as `(pool, volume)`.
pub fn disk_sources(xml: &str) -> (Vec<String>, Vec<(String, String)>) {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let (mut paths, mut volumes) = (Vec::new(), Vec::new());
    let mut in_disk = 0usize;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) if e.name().into_inner() == "disk" => in_disk += 1,
            Ok(Event::End(e)) if e.name().into_inner() == "disk" => in_disk = in_disk.saturating_sub(1),
            Ok(Event::Start(e) | Event::Empty(e)) if in_disk > 0 && e.name().into_inner() == "source" => {
                let mut attr = std::collections::HashMap::new();
                for a in e.attributes().flatten() {
                    let raw = a.value.to_string();
                    let value = quick_xml::escape::unescape(&raw).map(|v| v.into_owned()).unwrap_or(raw);
                    attr.insert(a.key.into_inner().to_string(), value);
                }
                paths.extend(attr.get("file").cloned());
                paths.extend(attr.get("dev").cloned());
                if let (Some(p), Some(v)) = (attr.get("pool"), attr.get("volume")) {
                    volumes.push((p.clone(), v.clone()));
                }
            }
            Ok(Event::Eof) | Err(_) => break,
            _ => {}
        }
    }
    (paths, volumes)
}

/// Every file the domains defined on a connection use as disks, with the
/// domain that uses each. On a local host, paths are also held resolved
/// (symlinks followed), so a disk reached through a symlinked directory
/// still matches its volume.
#[derive(Debug, Default)]
pub struct InUse {
    local: bool,
    /// Each path, with every domain that uses it (in the order seen).
    by_path: std::collections::BTreeMap<String, Vec<String>>,
}

impl InUse {
    /// The domain that uses `path` (as given, or resolved on a local host).
    pub fn get(&self, path: &str) -> Option<&String> {
        self.users(path).next()
    }

    /// A domain other than `domain` that uses `path`, if any does.
    pub fn other_than(&self, path: &str, domain: &str) -> Option<&String> {
        self.users(path).find(|d| d.as_str() != domain)
    }

    fn users(&self, path: &str) -> impl Iterator<Item = &String> {
        let real = match self.local {
            true => resolved(path).filter(|r| r != path),
            false => None,
        };
        let as_given = self.by_path.get(path).into_iter().flatten();
        as_given.chain(real.and_then(|r| self.by_path.get(&r)).into_iter().flatten())
    }

    fn add(&mut self, path: String, domain: &str) {
        let users = self.by_path.entry(path).or_default();
        if !users.iter().any(|d| d == domain) {
            users.push(domain.to_owned());
        }
    }
}

/// `path` with every symlink resolved, if it exists here.
fn resolved(path: &str) -> Option<String> {
    std::fs::canonicalize(path).ok()?.into_os_string().into_string().ok()
}

/// How deep a backing chain read from image headers is followed.
const MAX_CHAIN: usize = 16;

/// The backing file a local qcow2 names in its header (relative names taken
/// from the image's directory), reading a few KiB at most; `None` for
/// anything else (not a regular file, not qcow2, no backing file).
pub fn qcow2_backing_file(path: &str) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking: a FIFO planted as a disk source must not hang gc.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut head = [0u8; 24];
    f.read_exact(&mut head).ok()?;
    let (offset, len) = crate::images::inspect::qcow2_backing_ref(&head)?;
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut name = vec![0u8; len];
    f.read_exact(&mut name).ok()?;
    let name = String::from_utf8(name).ok()?;
    // A protocol (`nbd:`, `json:`…) is no local file.
    if name.contains(':') && !name.starts_with('/') {
        return None;
    }
    let p = std::path::Path::new(&name);
    let full = match p.is_absolute() {
        true => p.to_path_buf(),
        false => std::path::Path::new(path).parent()?.join(p),
    };
    full.into_os_string().into_string().ok()
}

/// Every file a domain defined on this connection uses as a disk, with the
/// domain that uses it: each disk's source and its whole backing chain, as
/// libvirt knows it and, on a local host (`local`), as the images' own
/// qcow2 headers name it (an overlay outside every pool may back onto a
/// pool volume). Any domain, project-vm's or not, renamed or copied: `gc`
/// never removes what is in use, nor `create` adopts it or `destroy`
/// deletes it.
pub fn disks_in_use(conn: &Connect, local: bool) -> anyhow::Result<InUse> {
    let doms = conn.list_all_domains(0).map_err(|e| explain_on(conn, e, "listing domains"))?;
    let mut used = InUse { local, ..InUse::default() };
    for dom in doms {
        let Ok(dname) = dom.name() else { continue };
        let mut xmls: Vec<String> = Vec::new();
        xmls.extend(dom.xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE).ok());
        if dom.is_active().unwrap_or(false) {
            xmls.extend(dom.xml_desc(0).ok());
        }
        let mut queue: Vec<(String, usize)> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for xml in &xmls {
            let (paths, volumes) = disk_sources(xml);
            queue.extend(paths.into_iter().map(|p| (p, 0)));
            for (pool, vol) in volumes {
                let path = conn
                    .lookup_storage_pool_by_name(&pool)
                    .and_then(|p| p.lookup_storage_vol_by_name(&vol))
                    .and_then(|v| v.path());
                queue.extend(path.ok().map(|p| (p, 0)));
            }
        }
        // Backing chains, as libvirt reads them from each image, and as
        // the headers of local files name them.
        while let Some((path, depth)) = queue.pop() {
            if !seen.insert(path.clone()) {
                continue;
            }
            let backing = conn
                .lookup_storage_vol_by_path(&path)
                .ok()
                .and_then(|v| super::storage::VolumeInfo::of(&v).ok())
                .and_then(|i| i.backing);
            used.add(path.clone(), &dname);
            if local {
                if let Some(real) = resolved(&path) {
                    used.add(real, &dname);
                }
            }
            if depth >= MAX_CHAIN {
                continue;
            }
            queue.extend(backing.map(|b| (b, depth + 1)));
            if local {
                queue.extend(qcow2_backing_file(&path).map(|b| (b, depth + 1)));
            }
        }
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_that_panics_fails_the_call_and_the_others_finish() {
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let r = ran.clone();
        let got = parallel((0..40).collect(), move |n: u32| {
            r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            assert_ne!(n, 3, "injected panic");
            n
        });
        let e = got.expect_err("a panicking lane fails the listing");
        assert!(e.message.contains("injected panic"), "{e}");
        // Only the panicking lane stopped early: the other three ran all of theirs.
        assert!(ran.load(std::sync::atomic::Ordering::SeqCst) >= 30 + 4);
        assert_eq!(parallel((0..40).collect(), |n: u32| n * 2).unwrap(), (0..40).map(|n| n * 2).collect::<Vec<_>>());
        assert_eq!(parallel(vec![1, 2], |n: u32| n).unwrap(), vec![1, 2]);
        let small = parallel(vec![1u32], |_| -> u32 { panic!("small inputs too") });
        assert!(small.unwrap_err().message.contains("small inputs too"));
    }

    #[test]
    fn finds_every_disk_source() {
        let xml = r#"<domain><name>x</name><devices>
  <disk type='file'><source file='/p/a.qcow2'/><backingStore type='file'><source file='/p/base.img'/></backingStore></disk>
  <disk type='block'><source dev='/dev/vg/x'/></disk>
  <disk type='volume'><source pool='pv' volume='d.qcow2'/></disk>
  <interface type='user'><source dev='ignored'/></interface>
  <filesystem><source dir='/srv'/></filesystem>
</devices></domain>"#;
        let (paths, volumes) = disk_sources(xml);
        assert_eq!(paths, vec!["/p/a.qcow2", "/p/base.img", "/dev/vg/x"]);
        assert_eq!(volumes, vec![("pv".to_owned(), "d.qcow2".to_owned())]);
    }
    #[test]
    fn a_qcow2_header_names_its_backing_file_relative_to_its_directory() {
        let dir = std::env::temp_dir().join(format!("pv-backing-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut head = vec![0u8; 512];
        head[..4].copy_from_slice(b"QFI\xfb");
        head[4..8].copy_from_slice(&3u32.to_be_bytes());
        head[8..16].copy_from_slice(&200u64.to_be_bytes());
        head[16..20].copy_from_slice(&7u32.to_be_bytes());
        head[200..207].copy_from_slice(b"base.im");
        let ovl = dir.join("ovl.qcow2");
        std::fs::write(&ovl, &head).unwrap();
        let p = ovl.to_str().unwrap();
        assert_eq!(qcow2_backing_file(p), Some(dir.join("base.im").to_str().unwrap().to_owned()));
        head[200..207].copy_from_slice(b"/a/b.im");
        std::fs::write(&ovl, &head).unwrap();
        assert_eq!(qcow2_backing_file(p).as_deref(), Some("/a/b.im"));
        head[200..207].copy_from_slice(b"nbd:x:1");
        std::fs::write(&ovl, &head).unwrap();
        assert_eq!(qcow2_backing_file(p), None, "a protocol is no file");
        head[8..16].copy_from_slice(&0u64.to_be_bytes());
        std::fs::write(&ovl, &head).unwrap();
        assert_eq!(qcow2_backing_file(p), None, "no backing file");
        assert_eq!(qcow2_backing_file(dir.to_str().unwrap()), None, "a directory");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_domain_that_uses_a_path_is_known() {
        let mut u = InUse { local: false, ..InUse::default() };
        u.add("/p/d.qcow2".into(), "project-a");
        u.add("/p/d.qcow2".into(), "theirs");
        assert_eq!(u.get("/p/d.qcow2").map(String::as_str), Some("project-a"));
        assert_eq!(u.other_than("/p/d.qcow2", "project-a").map(String::as_str), Some("theirs"));
        assert_eq!(u.other_than("/p/d.qcow2", "theirs").map(String::as_str), Some("project-a"));
        assert_eq!(u.other_than("/p/e.qcow2", "x"), None);
    }
}
