//! Several libvirt hosts as one: the `hosts` of the settings (and of a
//! declarative file), each a URI with the settings that differ there.
//!
//! Without `hosts`, the fleet is the one host of `--connect` (or the default
//! URI), unnamed, and everything reads as before. Connections are opened
//! lazily, once per host and run, so a verb that needs one host never waits
//! for another, and a host that is down fails only what needs it.

use std::sync::{Arc, OnceLock};

use super::Ctx;
use crate::error::{failure, invalid, not_found, Kind};
use crate::libvirt::daemon::Daemon;
use crate::libvirt::vms::{self, Lookup, Vm};
use crate::settings::{HostSettings, Settings};
use crate::spec::VmName;
use crate::suggest::did_you_mean;

pub struct Host {
    /// `None` for the one host of a fleet without `hosts`.
    pub name: Option<String>,
    pub uri: String,
    pub settings: Settings,
    ctx: OnceLock<Result<Arc<Ctx>, String>>,
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
            crate::libvirt::uri::check(u).map_err(|why| invalid(format!("--connect / PROJECT_VM_URI: {why}")))?;
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
            return Err(invalid(problems.join("\n")));
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
        let got = h.ctx.get_or_init(|| {
            let conn = match self.looking {
                true => crate::libvirt::connect_to_look(&h.uri),
                false => crate::libvirt::connect(&h.uri),
            };
            conn.map(|conn| {
                let ctx = Ctx::new(conn, h.uri.clone(), h.settings.clone(), self.json);
                Arc::new(Ctx { host_name: h.name.clone(), ..ctx })
            })
            .map_err(|e| format!("{e:#}"))
        });
        match got {
            Ok(ctx) => Ok(ctx.clone()),
            Err(e) if h.name.is_some() => Err(failure(Kind::Environment, format!("{}: {e}", h.label()))),
            Err(e) => Err(failure(Kind::Environment, e.clone())),
        }
    }

    pub fn host(&self, name: &str) -> anyhow::Result<&Host> {
        self.hosts.iter().find(|h| h.name.as_deref() == Some(name)).ok_or_else(|| {
            let names = self.names();
            match names.is_empty() {
                true if self.connect_overrides_hosts => invalid(format!("--host {name}: {CONNECT_OVERRIDES}")),
                true => invalid(format!("--host {name}: there are no hosts: add \"hosts\" to the settings")),
                false => invalid(format!(
                    "no host named {name}{}: hosts are {}",
                    did_you_mean(name, &names),
                    names.join(", ")
                )),
            }
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
        got.clone().map_err(invalid)
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
                return Err(invalid(format!("which host? Pick one with --host ({})", self.names().join(", "))))
            }
        };
        Ok((h, self.ctx(h)?))
    }

    /// `f` on each of `hosts` at once, with its connection (opened on first
    /// use); a host that cannot be connected gets the error. In `hosts`' order.
    pub fn ask<'a, R: Send>(
        &self,
        hosts: &[&'a Host],
        f: impl Fn(&Host, Arc<Ctx>) -> anyhow::Result<R> + Sync,
    ) -> Vec<(&'a Host, anyhow::Result<R>)> {
        let f = &f;
        std::thread::scope(|s| {
            let handles: Vec<_> =
                hosts.iter().map(|&h| s.spawn(move || (h, self.ctx(h).and_then(|ctx| f(h, ctx))))).collect();
            handles.into_iter().map(|t| t.join().expect("host thread")).collect()
        })
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
        let answers = self.ask(&hosts, |_, ctx| vms::lookup(&ctx.conn(), name).map(|l| (ctx, l)));
        let mut owned = Vec::new();
        let mut down = Vec::new();
        let mut foreign = None;
        for (h, a) in answers {
            match a {
                Ok((ctx, Lookup::Owned(vm))) => owned.push((h, ctx, *vm)),
                Ok((_, Lookup::Foreign(why))) => foreign = Some(why),
                Ok((_, Lookup::Absent)) => {}
                Err(e) => down.push(format!("{e:#}")),
            }
        }
        match owned.len() {
            1 => {
                let (h, ctx, vm) = owned.pop().expect("one");
                if !down.is_empty() {
                    let there = h.name.as_deref().unwrap_or_default();
                    let msg = format!(
                        "VM {name} is on host {there}, but these hosts did not answer and may have one too:\n  {}",
                        down.join("\n  ")
                    );
                    if acting {
                        return Err(failure(Kind::Environment, format!("{msg}\nSay which with --host {there}")));
                    }
                    if !self.json {
                        eprintln!("warning: {msg}");
                    }
                }
                Ok((ctx, vm))
            }
            0 if !down.is_empty() => Err(failure(
                Kind::Environment,
                format!("no VM named {name} on the hosts that answered; not reachable:\n  {}", down.join("\n  ")),
            )),
            0 => match foreign {
                Some(why) => Err(vms::foreign(name, why.as_deref())),
                None => Err(not_found(format!(
                    "no VM named {name} on any host ({}): see `project-vm list`",
                    self.names().join(", ")
                ))),
            },
            _ => {
                let on: Vec<&str> = owned.iter().filter_map(|(h, _, _)| h.name.as_deref()).collect();
                Err(invalid(format!("VM {name} is on more than one host: pick one with --host ({})", on.join(" or "))))
            }
        }
    }
}

fn host(name: Option<String>, uri: String, settings: Settings) -> Host {
    Host { name, uri, settings, ctx: OnceLock::new() }
}
