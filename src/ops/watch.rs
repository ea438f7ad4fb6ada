//! `watch`: what happens to project-vm's VMs, as it happens, from libvirt's
//! domain events, one line (or one JSON object) per event, across the hosts
//! of a fleet.
//!
//! Each host gets a connection of its own with libvirt's default event loop
//! (one thread runs it for all), a keep-alive, a close callback and two
//! event callbacks: lifecycle (defined, started, suspended, resumed,
//! stopped, shutting-down, crashed, undefined) and metadata change. The
//! callbacks only pass what they were told to the main thread, which
//! decides what is project-vm's (its ownership record) and prints. When a
//! daemon goes away (a restart), the host says `disconnected`, is tried
//! again every second, and says `reconnected` when it answers. Whether a
//! domain is project-vm's is read when its first event is handled: one
//! defined and undefined before that cannot be told, and is left out.
//!
//! project-vm's own events come from the metadata change event: `start
//! --wait` (and `create --wait`, `apply --wait`) records the guest's
//! readiness report in the running domain's live metadata
//! ([`READY_NAMESPACE`]), which `watch` reads back as `ready` or
//! `cloud-init-failed`. Without `--wait` nobody reads the guest's report,
//! and `watch` has nothing to say about readiness.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::io::Write;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use virt::connect::Connect;
use virt::sys;

use super::fleet::Fleet;
use crate::libvirt::vms::{self, Lookup};
use crate::spec::{VmName, DOMAIN_PREFIX};

pub use super::ready::{record_ready, READY_KEY, READY_NAMESPACE};

/// How often a host that went away is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// RFC 3339, UTC, seconds.
    pub time: String,
    /// The fleet host (only with `hosts`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The VM (none for a host's `disconnected` and `reconnected`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    pub event: &'static str,
    /// libvirt's reason (`booted`, `destroyed`...), or what the guest said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Event {
    fn new(host: &Option<String>, vm: Option<&VmName>, event: &'static str, detail: Option<String>) -> Event {
        Event {
            time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            host: host.clone(),
            vm: vm.map(|v| v.to_string()),
            event,
            detail,
        }
    }

    /// `2026-12-02T05:40:01Z web started (booted)`, ` on HOST` on a fleet.
    pub fn line(&self) -> String {
        let mut s = self.time.clone();
        if let Some(vm) = &self.vm {
            s.push(' ');
            s.push_str(vm);
        }
        s.push(' ');
        s.push_str(self.event);
        if let Some(d) = &self.detail {
            s.push_str(&format!(" ({d})"));
        }
        if let Some(h) = &self.host {
            s.push_str(&format!(" on {h}"));
        }
        s
    }
}

/// What a callback hands to the main thread.
#[derive(Debug)]
pub enum Raw {
    Lifecycle { host: usize, domain: String, uuid: String, event: i32, detail: i32 },
    Metadata { host: usize, domain: String, uuid: String, namespace: Option<String> },
    Closed { host: usize, reason: i32 },
}

/// What every callback of one connection knows.
struct Shared {
    host: usize,
    tx: Mutex<mpsc::Sender<Raw>>,
}

impl Shared {
    fn send(&self, raw: Raw) {
        let _ = self.tx.lock().unwrap_or_else(|p| p.into_inner()).send(raw);
    }
}

/// libvirt's default event loop, registered once before any watched
/// connection is opened, run by one thread for the rest of the process.
pub fn event_loop() -> anyhow::Result<()> {
    static STARTED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let got = STARTED.get_or_init(|| {
        virt::event::event_register_default_impl().map_err(|e| e.message().to_string())?;
        std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| loop {
                if virt::event::event_run_default_impl().is_err() {
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
            .map(drop)
            .map_err(|e| e.to_string())
    });
    got.clone().map_err(|e| super::Error::Environment(format!("cannot run libvirt's event loop: {e}")).into())
}

/// The domain's name and UUID, from a pointer libvirt lends a callback.
unsafe fn identify(dom: sys::virDomainPtr) -> (String, String) {
    let name = sys::virDomainGetName(dom);
    let name = if name.is_null() { String::new() } else { CStr::from_ptr(name).to_string_lossy().into_owned() };
    let mut buf = [0 as c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
    let uuid = match sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) {
        0 => CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned(),
        _ => String::new(),
    };
    (name, uuid)
}

unsafe extern "C" fn on_lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) {
    let shared = &*(opaque as *const Shared);
    let (domain, uuid) = identify(dom);
    shared.send(Raw::Lifecycle { host: shared.host, domain, uuid, event, detail });
}

unsafe extern "C" fn on_metadata(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    _kind: c_int,
    nsuri: *const c_char,
    opaque: *mut c_void,
) {
    let shared = &*(opaque as *const Shared);
    let (domain, uuid) = identify(dom);
    let namespace = (!nsuri.is_null()).then(|| CStr::from_ptr(nsuri).to_string_lossy().into_owned());
    shared.send(Raw::Metadata { host: shared.host, domain, uuid, namespace });
}

unsafe extern "C" fn on_close(_conn: sys::virConnectPtr, reason: c_int, opaque: *mut c_void) {
    let shared = &*(opaque as *const Shared);
    shared.send(Raw::Closed { host: shared.host, reason });
}

/// Frees a callback's share when libvirt lets go of it.
unsafe extern "C" fn release(opaque: *mut c_void) {
    drop(Arc::from_raw(opaque as *const Shared));
}

type Generic = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);

/// One watched host: its connection and callbacks, and the VMs on it that
/// are project-vm's (by UUID), so an `undefined` is still known as one.
pub struct HostWatch {
    pub index: usize,
    pub name: Option<String>,
    pub uri: String,
    conn: Option<Connect>,
    callbacks: Vec<c_int>,
    closing: bool,
    pub owned: HashMap<String, VmName>,
    /// Suspended VMs (by UUID): only they can be resumed. (QEMU's own
    /// resume as a guest starts is part of `started`, not a `resumed`.)
    paused: std::collections::HashSet<String>,
}

impl HostWatch {
    pub fn new(index: usize, name: Option<String>, uri: String) -> HostWatch {
        HostWatch {
            index,
            name,
            uri,
            conn: None,
            callbacks: Vec::new(),
            closing: false,
            owned: HashMap::new(),
            paused: Default::default(),
        }
    }

    pub fn attached(&self) -> bool {
        self.conn.is_some()
    }

    /// Opens the host's connection and subscribes to it.
    pub fn attach(&mut self, tx: &mpsc::Sender<Raw>) -> anyhow::Result<()> {
        let conn = crate::libvirt::connect_to_look(&self.uri)?;
        self.attach_to(conn, tx)
    }

    /// Subscribes to `conn` (the event loop runs: [`event_loop`]) and notes
    /// the VMs that are project-vm's now.
    pub fn attach_to(&mut self, conn: Connect, tx: &mpsc::Sender<Raw>) -> anyhow::Result<()> {
        // Missed keep-alives (a daemon that hangs, a network gone) close the
        // connection as an EOF would. Drivers without keep-alive say so: fine.
        let _ = conn.set_keep_alive(5, 3);
        let shared = Arc::new(Shared { host: self.index, tx: Mutex::new(tx.clone()) });
        let share = || Arc::into_raw(shared.clone()) as *mut c_void;
        // SAFETY: each registration owns one count of `shared`, given back by `release`.
        unsafe {
            let ptr = conn.as_ptr();
            if sys::virConnectRegisterCloseCallback(ptr, Some(on_close), share(), Some(release)) == 0 {
                self.closing = true;
            }
            let lifecycle: Generic = std::mem::transmute(on_lifecycle as *const ());
            let metadata: Generic = std::mem::transmute(on_metadata as *const ());
            for (id, cb) in
                [(sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE, lifecycle), (sys::VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, metadata)]
            {
                let opaque = share();
                let got = sys::virConnectDomainEventRegisterAny(
                    ptr,
                    std::ptr::null_mut(),
                    id as c_int,
                    Some(cb),
                    opaque,
                    Some(release),
                );
                if got < 0 {
                    release(opaque);
                    let e = virt::error::Error::last_error();
                    self.conn = Some(conn);
                    self.detach();
                    return Err(crate::libvirt::explain(e, "subscribing to domain events"));
                }
                self.callbacks.push(got);
            }
        }
        let listed = vms::list(&conn)?;
        let uuid = |vm: &vms::Vm| vm.dom.uuid_string().unwrap_or_default();
        self.paused = listed.iter().filter(|vm| vm.state() == vms::State::Paused).map(uuid).collect();
        self.owned = listed.iter().map(|vm| (uuid(vm), vm.name.clone())).collect();
        self.conn = Some(conn);
        Ok(())
    }

    /// Lets go of the connection (a dead one's calls fail at once: ignored).
    pub fn detach(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        // SAFETY: the ids and the close callback were registered on this connection.
        unsafe {
            for id in self.callbacks.drain(..) {
                sys::virConnectDomainEventDeregisterAny(conn.as_ptr(), id);
            }
            if std::mem::take(&mut self.closing) {
                sys::virConnectUnregisterCloseCallback(conn.as_ptr(), Some(on_close));
            }
        }
        drop(conn);
    }

    /// The event a callback reported, if it is about one of project-vm's
    /// VMs that `only` names (all when empty).
    pub fn translate(&mut self, raw: Raw, only: &[VmName]) -> Option<Event> {
        let wanted = |n: &VmName| only.is_empty() || only.contains(n);
        match raw {
            Raw::Closed { reason, .. } => {
                self.detach();
                Some(Event::new(&self.name, None, "disconnected", Some(close_reason(reason).into())))
            }
            Raw::Lifecycle { domain, uuid, event, detail, .. } => {
                let name = self.owner(&domain, &uuid, event == sys::VIR_DOMAIN_EVENT_DEFINED as i32)?;
                if event == sys::VIR_DOMAIN_EVENT_UNDEFINED as i32 {
                    self.owned.remove(&uuid);
                }
                if !self.follow_pause(&uuid, event) {
                    return None;
                }
                let (word, why) = lifecycle(event, detail);
                wanted(&name).then(|| Event::new(&self.name, Some(&name), word, why.map(String::from)))
            }
            Raw::Metadata { domain, uuid, namespace, .. } => {
                if namespace.as_deref() != Some(READY_NAMESPACE) {
                    return None;
                }
                let name = self.owner(&domain, &uuid, false)?;
                let (word, detail) = self.readiness(&domain)?;
                wanted(&name).then(|| Event::new(&self.name, Some(&name), word, detail))
            }
        }
    }

    /// Keeps track of suspended VMs; false for a `resumed` of one that was
    /// not suspended (QEMU resuming the CPUs it starts with).
    fn follow_pause(&mut self, uuid: &str, event: i32) -> bool {
        match event as u32 {
            sys::VIR_DOMAIN_EVENT_SUSPENDED => {
                self.paused.insert(uuid.to_owned());
                true
            }
            sys::VIR_DOMAIN_EVENT_RESUMED => self.paused.remove(uuid),
            sys::VIR_DOMAIN_EVENT_STOPPED | sys::VIR_DOMAIN_EVENT_UNDEFINED => {
                self.paused.remove(uuid);
                true
            }
            _ => true,
        }
    }

    /// The VM's name when the domain is project-vm's: known by UUID, or (a
    /// new definition, or one made before this watch listed) by its record.
    fn owner(&mut self, domain: &str, uuid: &str, defined: bool) -> Option<VmName> {
        if let Some(n) = self.owned.get(uuid).filter(|_| !defined) {
            return Some(n.clone());
        }
        let name = VmName::parse(domain.strip_prefix(DOMAIN_PREFIX)?).ok()?;
        match vms::lookup(self.conn.as_ref()?, &name) {
            Ok(Lookup::Owned(vm)) if vm.dom.uuid_string().ok().as_deref() == Some(uuid) => {
                self.owned.insert(uuid.to_owned(), name.clone());
                Some(name)
            }
            _ => None,
        }
    }

    /// `ready` or `cloud-init-failed`, from the live readiness record.
    fn readiness(&self, domain: &str) -> Option<(&'static str, Option<String>)> {
        let dom = self.conn.as_ref()?.lookup_domain_by_name(domain).ok()?;
        let kind = sys::VIR_DOMAIN_METADATA_ELEMENT as i32;
        let xml = dom.metadata(kind, Some(READY_NAMESPACE), sys::VIR_DOMAIN_AFFECT_LIVE).ok()?;
        let result = attribute(&xml, "result")?;
        match result.as_str() {
            "error" => Some(("cloud-init-failed", attribute(&xml, "detail"))),
            _ => Some(("ready", Some(result))),
        }
    }
}

impl Drop for HostWatch {
    fn drop(&mut self) {
        self.detach();
    }
}

/// An attribute's value in a one-element document (`result="done"`).
fn attribute(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!(" {name}=\""))? + name.len() + 3;
    let end = xml[start..].find('"')? + start;
    Some(xml[start..end].replace("&quot;", "\"").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
}

fn close_reason(reason: i32) -> &'static str {
    match reason as u32 {
        sys::VIR_CONNECT_CLOSE_REASON_EOF => "the daemon closed the connection",
        sys::VIR_CONNECT_CLOSE_REASON_KEEPALIVE => "the daemon stopped answering keep-alives",
        sys::VIR_CONNECT_CLOSE_REASON_CLIENT => "closed by this client",
        _ => "connection error",
    }
}

/// libvirt's lifecycle event and its reason, in words.
pub fn lifecycle(event: i32, detail: i32) -> (&'static str, Option<&'static str>) {
    let d = detail as usize;
    let pick = |words: &[&'static str]| words.get(d).copied();
    match event as u32 {
        sys::VIR_DOMAIN_EVENT_DEFINED => ("defined", pick(&["added", "updated", "renamed", "from-snapshot"])),
        sys::VIR_DOMAIN_EVENT_UNDEFINED => ("undefined", pick(&["removed", "renamed"])),
        // Memory saved and restored (libvirt's managed save, `virsh
        // save`/`restore`) is a suspend and a resume to the VM's user.
        sys::VIR_DOMAIN_EVENT_STARTED if detail as u32 == sys::VIR_DOMAIN_EVENT_STARTED_RESTORED => {
            ("resumed", Some("restored"))
        }
        sys::VIR_DOMAIN_EVENT_STOPPED if detail as u32 == sys::VIR_DOMAIN_EVENT_STOPPED_SAVED => {
            ("suspended", Some("saved"))
        }
        sys::VIR_DOMAIN_EVENT_STARTED => {
            ("started", pick(&["booted", "migrated", "restored", "from-snapshot", "wakeup"]))
        }
        sys::VIR_DOMAIN_EVENT_SUSPENDED => (
            "suspended",
            pick(&[
                "paused",
                "migrated",
                "io-error",
                "watchdog",
                "restored",
                "from-snapshot",
                "api-error",
                "postcopy",
                "postcopy-failed",
            ]),
        ),
        sys::VIR_DOMAIN_EVENT_RESUMED => {
            ("resumed", pick(&["unpaused", "migrated", "from-snapshot", "postcopy", "postcopy-failed"]))
        }
        sys::VIR_DOMAIN_EVENT_STOPPED => {
            ("stopped", pick(&["shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from-snapshot"]))
        }
        sys::VIR_DOMAIN_EVENT_SHUTDOWN => ("shutting-down", pick(&["finished", "guest", "host"])),
        sys::VIR_DOMAIN_EVENT_PMSUSPENDED => ("pm-suspended", pick(&["memory", "disk"])),
        sys::VIR_DOMAIN_EVENT_CRASHED => ("crashed", pick(&["panicked", "crashloaded"])),
        _ => ("unknown", None),
    }
}

/// `watch`: subscribes to every host `--host` selects and prints events
/// until interrupted (exit 130) or nobody reads them (`watch | head -3`,
/// `watch >&-`: exit 0, within a second).
pub fn watch(fleet: &Fleet, only_host: Option<&str>, names: &[VmName], json: bool) -> anyhow::Result<()> {
    if stdout_is_null() {
        return Err(crate::ops::Error::Invalid(
            "watch prints its events to stdout, which is closed, /dev/null or read-only: nothing would read them; \
             run it with stdout on a terminal, a file or a pipe"
                .into(),
        )
        .into());
    }
    event_loop()?;
    crate::interrupt::install();
    let hosts = fleet.select(only_host)?;
    let (tx, rx) = mpsc::channel();
    let mut watches: Vec<HostWatch> =
        hosts.iter().enumerate().map(|(i, h)| HostWatch::new(i, h.name.clone(), h.uri.clone())).collect();
    for w in &mut watches {
        if let Err(e) = w.attach(&tx) {
            crate::messages::warn(format!("{}: {e:#}; trying again every second", label(w)));
        }
    }
    crate::messages::note(format!(
        "watching {} on {} (Ctrl-C stops)",
        match names.is_empty() {
            true => "every project-vm VM".to_string(),
            false => names.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", "),
        },
        watches.iter().map(label).collect::<Vec<_>>().join(", ")
    ));
    run(&mut watches, &rx, &tx, names, &mut |e| print(json, e), &stdout_gone)
}

/// True when stdout is /dev/null, which is also what a closed stdout
/// becomes (Rust's runtime opens /dev/null on a closed fd 0, 1 or 2), or
/// is open for reading only.
fn stdout_is_null() -> bool {
    use nix::sys::stat::SFlag;
    use std::os::unix::fs::MetadataExt;
    let null = std::fs::metadata("/dev/null").map(|m| m.rdev());
    let out = nix::sys::stat::fstat(std::io::stdout());
    let char_device = |mode| SFlag::from_bits_truncate(mode) & SFlag::S_IFMT == SFlag::S_IFCHR;
    // Open for reading only (`watch 1<file`): every write would fail, unseen.
    let read_only = nix::fcntl::fcntl(std::io::stdout(), nix::fcntl::FcntlArg::F_GETFL).is_ok_and(|fl| {
        nix::fcntl::OFlag::from_bits_truncate(fl) & nix::fcntl::OFlag::O_ACCMODE == nix::fcntl::OFlag::O_RDONLY
    });
    read_only || matches!((null, out), (Ok(null), Ok(out)) if char_device(out.st_mode) && out.st_rdev == null)
}

/// True when nobody can read what `watch` prints: stdout is closed
/// (`watch >&-`) or its pipe's reader has gone (`watch | head -3`). Rust's
/// stdout swallows writes to a closed descriptor, and a pipe is only found
/// broken at the next write, which may be hours away: so `watch` asks.
pub fn stdout_gone() -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let stdout = std::io::stdout();
    let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::empty())];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL)),
        Err(_) => false,
    }
}

fn label(w: &HostWatch) -> String {
    match &w.name {
        Some(n) => format!("host {n} ({})", w.uri),
        None => w.uri.clone(),
    }
}

/// The main loop: events as they come; hosts that went away tried again.
pub fn run(
    watches: &mut [HostWatch],
    rx: &mpsc::Receiver<Raw>,
    tx: &mpsc::Sender<Raw>,
    names: &[VmName],
    out: &mut dyn FnMut(&Event) -> anyhow::Result<()>,
    gone: &dyn Fn() -> bool,
) -> anyhow::Result<()> {
    loop {
        crate::interrupt::check()?;
        if gone() {
            return Ok(());
        }
        match rx.recv_timeout(RETRY) {
            Ok(raw) => {
                let host = match &raw {
                    Raw::Lifecycle { host, .. } | Raw::Metadata { host, .. } | Raw::Closed { host, .. } => *host,
                };
                if let Some(e) = watches.get_mut(host).and_then(|w| w.translate(raw, names)) {
                    out(&e)?;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => reattach(watches, tx, out)?,
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
}

fn reattach(
    watches: &mut [HostWatch],
    tx: &mpsc::Sender<Raw>,
    out: &mut dyn FnMut(&Event) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for w in watches.iter_mut().filter(|w| !w.attached()) {
        if w.attach(tx).is_ok() {
            out(&Event::new(&w.name, None, "reconnected", Some(w.uri.clone())))?;
        }
    }
    Ok(())
}

fn print(json: bool, e: &Event) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match json {
        true => writeln!(out, "{}", serde_json::to_string(e)?)?,
        false => writeln!(out, "{}", e.line())?,
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_words() {
        assert_eq!(lifecycle(sys::VIR_DOMAIN_EVENT_STARTED as i32, 0), ("started", Some("booted")));
        assert_eq!(lifecycle(sys::VIR_DOMAIN_EVENT_STOPPED as i32, 1), ("stopped", Some("destroyed")));
        assert_eq!(lifecycle(sys::VIR_DOMAIN_EVENT_UNDEFINED as i32, 0), ("undefined", Some("removed")));
        assert_eq!(lifecycle(sys::VIR_DOMAIN_EVENT_SUSPENDED as i32, 0), ("suspended", Some("paused")));
        assert_eq!(lifecycle(sys::VIR_DOMAIN_EVENT_CRASHED as i32, 0), ("crashed", Some("panicked")));
        assert_eq!(lifecycle(sys::VIR_DOMAIN_EVENT_STOPPED as i32, 99), ("stopped", None));
        // A managed save and its restore: suspended and resumed, as the user asked.
        let saved = sys::VIR_DOMAIN_EVENT_STOPPED_SAVED as i32;
        assert_eq!(lifecycle(sys::VIR_DOMAIN_EVENT_STOPPED as i32, saved), ("suspended", Some("saved")));
        let restored = sys::VIR_DOMAIN_EVENT_STARTED_RESTORED as i32;
        assert_eq!(lifecycle(sys::VIR_DOMAIN_EVENT_STARTED as i32, restored), ("resumed", Some("restored")));
    }

    #[test]
    fn a_resume_without_a_suspend_is_part_of_the_start() {
        let mut w = HostWatch::new(0, None, "test:///default".into());
        w.owned.insert("u1".into(), VmName::parse("web").unwrap());
        let raw = |event: u32| Raw::Lifecycle {
            host: 0,
            domain: "project-web".into(),
            uuid: "u1".into(),
            event: event as i32,
            detail: 0,
        };
        let mut seen = |event: u32| w.translate(raw(event), &[]).map(|e| e.event);
        assert_eq!(seen(sys::VIR_DOMAIN_EVENT_RESUMED), None, "QEMU resuming the CPUs it starts with");
        assert_eq!(seen(sys::VIR_DOMAIN_EVENT_STARTED), Some("started"));
        assert_eq!(seen(sys::VIR_DOMAIN_EVENT_SUSPENDED), Some("suspended"));
        assert_eq!(seen(sys::VIR_DOMAIN_EVENT_RESUMED), Some("resumed"));
        assert_eq!(seen(sys::VIR_DOMAIN_EVENT_RESUMED), None);
    }

    #[test]
    fn lines_and_json() {
        let e = Event {
            time: "2026-12-02T05:40:01Z".into(),
            host: Some("gpu".into()),
            vm: Some("web".into()),
            event: "started",
            detail: Some("booted".into()),
        };
        assert_eq!(e.line(), "2026-12-02T05:40:01Z web started (booted) on gpu");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"time":"2026-12-02T05:40:01Z","host":"gpu","vm":"web","event":"started","detail":"booted"}"#
        );
        assert_eq!(attribute(r#"<ready result="error" detail="a &amp; b"/>"#, "detail").as_deref(), Some("a & b"));
    }
}
