//! Several libvirt hosts as one: the `hosts` of the settings (and of a
//! declarative file), each a URI with the settings that differ there.
//!
//! Without `hosts`, the fleet is the one host of `--connect` (or the default
//! URI), unnamed, and everything reads as before. Connections are opened
//! lazily, once per host and run, so a verb that needs one host never waits
//! for another, and a host that is down fails only what needs it.

use std::sync::{Arc, OnceLock};

use super::{Ctx, Error};
use crate::fanout::Panicked;
use crate::libvirt::daemon::Daemon;
use crate::libvirt::vms::{self, Lookup, Vm};
use crate::settings::{HostSettings, Settings};
use crate::spec::VmName;
use crate::suggest::did_you_mean;

/// A host of the fleet. A clone shares the original's connection (opened
/// once, by whichever asks first), so workers can own one.
#[derive(Clone)]
pub struct Host {
    /// `None` for the one host of a fleet without `hosts`.
    pub name: Option<String>,
    pub uri: String,
    pub settings: Settings,
    ctx: Arc<OnceLock<Result<Arc<Ctx>, String>>>,
}

impl Host {
    /// `name`, or the URI for the unnamed host: how messages name it.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("host {n} ({})", self.uri),
            None => self.uri.clone(),
        }
    }
}

pub struct Fleet {
    pub hosts: Vec<Host>,
    json: bool,
    /// `hosts` were declared but `--connect` (or `PROJECT_VM_URI`) chose one
    /// libvirt instead: messages about hosts say so.
    pub connect_overrides_hosts: bool,
    /// Whether every host that answers is a daemon of its own ([`Fleet::check_distinct`]).
    distinct: OnceLock<Result<(), String>>,
    /// The verb only looks (list, status, ssh...): where libvirt refuses a
    /// read-write connection to a system daemon, a read-only one will do.
    pub looking: bool,
}

/// Why `host` and `--host` cannot be used on a fleet of one unnamed host.
pub const CONNECT_OVERRIDES: &str =
    "--connect (or PROJECT_VM_URI) talks to one libvirt, so the settings' \"hosts\" are not used: drop it to use them";

impl Fleet {
    /// The hosts of `common.hosts`, each with its settings overlaid on the
    /// common ones; or, with none (or an explicit `--connect`), the one host
    /// at `uri`. Every host's bad settings are reported at once.
    pub fn new(mut common: HostSettings, uri: Option<String>, json: bool) -> anyhow::Result<Fleet> {
        let hosts = common.hosts.take();
        // A malformed URI is bad input (exit 2), said before anything connects.
        if let Some(u) = &uri {
            crate::libvirt::uri::check(u)
                .map_err(|why| Error::Invalid(format!("--connect / PROJECT_VM_URI: {why}")))?;
        }
        let overridden = uri.is_some() && hosts.as_ref().is_some_and(|h| !h.is_empty());
        let one = |common: HostSettings| -> anyhow::Result<Fleet> {
            let uri = uri.clone().unwrap_or_else(|| crate::libvirt::default_uri().to_owned());
            let settings = common.resolve_for(&Daemon::of(&uri))?;
            Ok(Fleet {
                hosts: vec![host(None, uri, settings)],
                json,
                connect_overrides_hosts: overridden,
                looking: false,
                distinct: OnceLock::new(),
            })
        };
        let hosts = match hosts {
            // --connect talks to that one libvirt, as without hosts.
            Some(h) if uri.is_none() && !h.is_empty() => h,
            _ => return one(common),
        };
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for (name, entry) in hosts {
            match common.clone().overlay(entry.settings).resolve_for(&Daemon::of(&entry.uri)) {
                Ok(settings) => out.push(host(Some(name), entry.uri, settings)),
                Err(e) => problems.push(format!("hosts.{name}: {e:#}")),
            }
        }
        if !problems.is_empty() {
            return Err(Error::Invalid(problems.join("\n")).into());
        }
        Ok(Fleet { hosts: out, json, connect_overrides_hosts: false, looking: false, distinct: OnceLock::new() })
    }

    /// The one-host fleet of an open connection.
    pub fn of(ctx: Arc<Ctx>) -> Fleet {
        let h = host(None, ctx.uri.clone(), ctx.settings.clone());
        let json = ctx.json;
        let _ = h.ctx.set(Ok(ctx));
        Fleet { hosts: vec![h], json, connect_overrides_hosts: false, looking: false, distinct: OnceLock::new() }
    }

    /// Reports are JSON (`--json`): progress stays quiet.
    pub fn json(&self) -> bool {
        self.json
    }

    /// True when hosts have names (a `hosts` map): reports show them.
    pub fn is_named(&self) -> bool {
        self.hosts.iter().any(|h| h.name.is_some())
    }

    pub fn names(&self) -> Vec<&str> {
        self.hosts.iter().filter_map(|h| h.name.as_deref()).collect()
    }

    /// The host's connection, opened on first use; a failure is remembered,
    /// so a host that is down is asked once per run.
    pub fn ctx(&self, h: &Host) -> anyhow::Result<Arc<Ctx>> {
        open(h, self.looking, self.json)
    }

    pub fn host(&self, name: &str) -> anyhow::Result<&Host> {
        self.hosts.iter().find(|h| h.name.as_deref() == Some(name)).ok_or_else(|| {
            let names = self.names();
            match names.is_empty() {
                true if self.connect_overrides_hosts => Error::Invalid(format!("--host {name}: {CONNECT_OVERRIDES}")),
                true => Error::Invalid(format!("--host {name}: there are no hosts: add \"hosts\" to the settings")),
                false => Error::Invalid(format!(
                    "no host named {name}{}: hosts are {}",
                    did_you_mean(name, &names),
                    names.join(", ")
                )),
            }
            .into()
        })
    }

    /// Two host entries that reach one libvirt daemon (the same host UUID,
    /// driver and system or session, however their URIs are spelled) would
    /// let `--host a destroy x` destroy a VM listed under host b: such a
    /// fleet is refused (exit 2) before any verb acts. Every host is asked
    /// once per run, at once; a host that does not answer is not compared.
    pub fn check_distinct(&self) -> anyhow::Result<()> {
        if self.hosts.len() < 2 {
            return Ok(());
        }
        let got = self.distinct.get_or_init(|| {
            let all: Vec<&Host> = self.hosts.iter().collect();
            let mut seen: Vec<(String, &Host)> = Vec::new();
            let mut problems = Vec::new();
            for (h, id) in self.ask(&all, |_, ctx| ctx.lock_scope()) {
                let Ok(id) = id else { continue };
                match seen.iter().find(|(i, _)| *i == id) {
                    Some((_, other)) => problems.push(format!(
                        "{} and {} are the same libvirt daemon ({id}): give each host entry a daemon of its own",
                        other.label(),
                        h.label()
                    )),
                    None => seen.push((id, h)),
                }
            }
            match problems.is_empty() {
                true => Ok(()),
                false => Err(format!("hosts: {}; nothing was done", problems.join("; "))),
            }
        });
        got.clone().map_err(|e| Error::Invalid(e).into())
    }

    /// The hosts `--host` selects: that one, or all (once the fleet's hosts
    /// are known to be distinct daemons).
    pub fn select(&self, name: Option<&str>) -> anyhow::Result<Vec<&Host>> {
        self.check_distinct()?;
        match name {
            Some(n) => Ok(vec![self.host(n)?]),
            None => Ok(self.hosts.iter().collect()),
        }
    }

    /// The one host a verb that makes something works on: `--host`, or the
    /// only host there is.
    pub fn one(&self, name: Option<&str>) -> anyhow::Result<(&Host, Arc<Ctx>)> {
        self.check_distinct()?;
        let h = match (name, self.hosts.as_slice()) {
            (Some(n), _) => self.host(n)?,
            (None, [only]) => only,
            (None, _) => {
                return Err(
                    Error::Invalid(format!("which host? Pick one with --host ({})", self.names().join(", "))).into()
                )
            }
        };
        Ok((h, self.ctx(h)?))
    }

    /// `f` on each of `hosts` at once ([`crate::fanout`]), with its
    /// connection (opened on first use); a host that cannot be connected
    /// gets the error, and so does a host whose worker panicked (that
    /// host's failure, named by its label, as if it had not answered). In
    /// `hosts`' order.
    pub fn ask<'a, R, F>(&self, hosts: &[&'a Host], f: F) -> Vec<(&'a Host, anyhow::Result<R>)>
    where
        R: Send + 'static,
        F: Fn(&Host, Arc<Ctx>) -> anyhow::Result<R> + Send + Sync + 'static,
    {
        let (looking, json) = (self.looking, self.json);
        let owned: Vec<Host> = hosts.iter().map(|&h| h.clone()).collect();
        let answers =
            crate::fanout::map(owned, hosts.len(), move |h| open(&h, looking, json).and_then(|ctx| f(&h, ctx)));
        hosts.iter().zip(answers).map(|(&h, a)| (h, a.unwrap_or_else(|p| Err(host_panicked(h, p))))).collect()
    }

    /// The VM called `name`, wherever it is: the hosts are asked at once. A
    /// name on two hosts is ambiguous (`--host` picks). When a host does not
    /// answer, it might hold a VM of that name too: a verb that changes the
    /// VM (`acting`) then refuses and asks for `--host`; one that only looks
    /// goes on with a warning.
    pub fn find(&self, name: &VmName, host: Option<&str>, acting: bool) -> anyhow::Result<(Arc<Ctx>, Vm)> {
        let hosts = self.select(host)?;
        if let [h] = hosts.as_slice() {
            let ctx = self.ctx(h)?;
            let vm = vms::get(&ctx.conn(), name)?;
            return Ok((ctx, vm));
        }
        let wanted = name.clone();
        let answers = self.ask(&hosts, move |_, ctx| vms::lookup(&ctx.conn(), &wanted).map(|l| (ctx, l)));
        self.pick(name, Found::of(answers), acting)
    }

    /// [`Fleet::find`]'s answer from what the hosts said.
    fn pick(&self, name: &VmName, mut found: Found, acting: bool) -> anyhow::Result<(Arc<Ctx>, Vm)> {
        let down = &found.down;
        match found.owned.len() {
            1 => {
                let (h, ctx, vm) = found.owned.pop().expect("one");
                if !down.is_empty() {
                    let there = h.name.as_deref().unwrap_or_default();
                    let msg = format!(
                        "VM {name} is on host {there}, but these hosts did not answer and may have one too:\n  {}",
                        down.join("\n  ")
                    );
                    if acting {
                        return Err(Error::Environment(format!("{msg}\nSay which with --host {there}")).into());
                    }
                    crate::messages::warn(msg);
                }
                Ok((ctx, vm))
            }
            0 if !down.is_empty() => Err(Error::Environment(format!(
                "no VM named {name} on the hosts that answered; not reachable:\n  {}",
                down.join("\n  ")
            ))
            .into()),
            0 => match found.foreign {
                Some(why) => Err(vms::foreign(name, why.as_deref())),
                None => Err(Error::NotFound(format!(
                    "no VM named {name} on any host ({}): see `project-vm list`",
                    self.names().join(", ")
                ))
                .into()),
            },
            _ => {
                let on: Vec<&str> = found.owned.iter().filter_map(|(h, _, _)| h.name.as_deref()).collect();
                Err(Error::Invalid(format!(
                    "VM {name} is on more than one host: pick one with --host ({})",
                    on.join(" or ")
                ))
                .into())
            }
        }
    }
}

/// Each host's answer to "is there a VM of that name?".
type Answers<'a> = Vec<(&'a Host, anyhow::Result<(Arc<Ctx>, Lookup)>)>;

/// What the hosts said of one name: where it is project-vm's VM, which
/// hosts did not answer, and why a domain of that name is not ours.
struct Found<'a> {
    owned: Vec<(&'a Host, Arc<Ctx>, Vm)>,
    down: Vec<String>,
    foreign: Option<Option<String>>,
}

impl<'a> Found<'a> {
    fn of(answers: Answers<'a>) -> Found<'a> {
        let mut found = Found { owned: Vec::new(), down: Vec::new(), foreign: None };
        for (h, a) in answers {
            match a {
                Ok((ctx, Lookup::Owned(vm))) => found.owned.push((h, ctx, *vm)),
                Ok((_, Lookup::Foreign(why))) => found.foreign = Some(why),
                Ok((_, Lookup::Absent)) => {}
                Err(e) => found.down.push(format!("{e:#}")),
            }
        }
        found
    }
}

fn host(name: Option<String>, uri: String, settings: Settings) -> Host {
    Host { name, uri, settings, ctx: Arc::new(OnceLock::new()) }
}

/// [`Fleet::ctx`]: the host's connection, opened once.
fn open(h: &Host, looking: bool, json: bool) -> anyhow::Result<Arc<Ctx>> {
    let got = h.ctx.get_or_init(|| {
        let conn = match looking {
            true => crate::libvirt::connect_to_look(&h.uri),
            false => crate::libvirt::connect(&h.uri),
        };
        conn.map(|conn| {
            let ctx = Ctx::new(conn, h.uri.clone(), h.settings.clone(), json);
            Arc::new(Ctx { host_name: h.name.clone(), ..ctx })
        })
        .map_err(|e| format!("{e:#}"))
    });
    match got {
        Ok(ctx) => Ok(ctx.clone()),
        Err(e) if h.name.is_some() => Err(Error::Environment(format!("{}: {e}", h.label())).into()),
        Err(e) => Err(Error::Environment(e.clone()).into()),
    }
}

/// A host whose worker panicked: that host's failure, named.
fn host_panicked(h: &Host, p: Panicked) -> anyhow::Error {
    anyhow::Error::new(p).context(h.label())
}

/// True when `e` is a host whose worker panicked ([`Fleet::ask`]): callers
/// that let an unreachable host fail alone treat it the same way.
pub fn worker_panicked(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<Panicked>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet_of(names: &[&str]) -> Fleet {
        let settings = HostSettings::default().resolve().unwrap();
        let hosts =
            names.iter().map(|n| host(Some(n.to_string()), "test:///default".into(), settings.clone())).collect();
        Fleet { hosts, json: false, connect_overrides_hosts: false, distinct: OnceLock::new(), looking: false }
    }

    #[test]
    fn a_host_whose_worker_panics_fails_alone() {
        let fleet = fleet_of(&["a", "b", "c"]);
        let all: Vec<&Host> = fleet.hosts.iter().collect();
        let answers = fleet.ask(&all, |h, ctx| {
            assert_ne!(h.name.as_deref(), Some("b"), "injected panic");
            Ok(format!("{} answered on {}", h.name.as_deref().unwrap(), ctx.uri))
        });
        let names: Vec<_> = answers.iter().map(|(h, _)| h.name.as_deref().unwrap()).collect();
        assert_eq!(names, ["a", "b", "c"], "in the hosts' order");
        assert_eq!(answers[0].1.as_ref().unwrap(), "a answered on test:///default");
        assert_eq!(answers[2].1.as_ref().unwrap(), "c answered on test:///default");
        let e = answers[1].1.as_ref().unwrap_err();
        assert!(worker_panicked(e), "{e:#}");
        let said = format!("{e:#}");
        assert!(said.contains("host b (test:///default)") && said.contains("injected panic"), "{said}");
        assert_eq!(crate::exit::kind(e), crate::error::Kind::Failed);
        // The hosts that answered keep their connections for the next question.
        let again = fleet.ask(&all[..1], |_, _| Ok(1));
        assert_eq!(again[0].1.as_ref().unwrap(), &1);
    }

    #[test]
    fn find_reports_a_panicked_host_as_not_answering() {
        let mut found = Found::of(Vec::new());
        let fleet = fleet_of(&["a", "b"]);
        found.down.push(format!("{:#}", host_panicked(&fleet.hosts[1], Panicked { message: "boom".into() })));
        let name = VmName::parse("nope").unwrap();
        let e = fleet.pick(&name, found, false).err().expect("no VM");
        assert_eq!(crate::exit::kind(&e), crate::error::Kind::Environment, "{e:#}");
        assert!(format!("{e:#}").contains("not reachable:\n  host b (test:///default): internal error"), "{e:#}");
    }
}
