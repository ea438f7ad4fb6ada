//! Finding project-vm's VMs. A domain counts as a VM only when it carries
//! project-vm's ownership metadata; everything else is somebody else's.

use serde::Serialize;
use virt::connect::Connect;
use virt::domain::{Domain, DomainState};
use virt::error::ErrorNumber;

use super::metadata::Ownership;
use super::{explain, is};
use crate::error::{invalid, not_found};
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Running,
    Paused,
    Shutoff,
    Crashed,
    Other,
}

impl State {
    pub fn of(dom: &Domain) -> State {
        match dom.state() {
            Ok((s, _)) => match s.known() {
                Some(DomainState::Running | DomainState::Blocked) => State::Running,
                Some(DomainState::Paused | DomainState::PMSuspended) => State::Paused,
                Some(DomainState::Shutoff) => State::Shutoff,
                Some(DomainState::Crashed) => State::Crashed,
                _ => State::Other,
            },
            Err(_) => State::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Paused => "paused",
            State::Shutoff => "shutoff",
            State::Crashed => "crashed",
            State::Other => "other",
        }
    }
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
        Err(e) => return Err(explain(e, format!("looking up domain {}", name.domain()))),
    };
    Ok(match Ownership::read(&dom)? {
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
        Lookup::Absent => Err(not_found(format!(
            "no VM named {name} (no domain {}): see `project-vm list`, or create it with `project-vm create {name}`",
            name.domain()
        ))),
        Lookup::Foreign(why) => Err(foreign(name, why.as_deref())),
    }
}

pub fn foreign(name: &VmName, why: Option<&str>) -> anyhow::Error {
    let why = why
        .map(|w| format!("its project-vm metadata is not its own: {w}"))
        .unwrap_or_else(|| "it has no project-vm metadata".into());
    invalid(format!(
        "domain {} exists but was not created by project-vm ({why}); \
         project-vm will not touch it. Pick another name, or remove it yourself with virsh if it is yours to remove",
        name.domain()
    ))
}

/// Every project-vm VM on this connection, sorted by name.
pub fn list(conn: &Connect) -> anyhow::Result<Vec<Vm>> {
    let doms = conn.list_all_domains(0).map_err(|e| explain(e, "listing domains"))?;
    let mut vms = Vec::new();
    for dom in doms {
        let Ok(dname) = dom.name() else { continue };
        let Some(short) = dname.strip_prefix(DOMAIN_PREFIX) else { continue };
        let Ok(name) = VmName::parse(short) else { continue };
        match Ownership::read(&dom) {
            Ok(Some(own)) => match own.mismatch(&dname, &dom.uuid_string().unwrap_or_default()) {
                None => vms.push(Vm { name, dom, own }),
                Some(why) => tracing::warn!(domain = dname, "skipping domain: {why}"),
            },
            Ok(None) => tracing::debug!(domain = dname, "skipping domain without project-vm metadata"),
            Err(e) => tracing::warn!(domain = dname, "skipping domain: {e:#}"),
        }
    }
    vms.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(vms)
}
