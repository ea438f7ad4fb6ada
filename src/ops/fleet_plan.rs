//! `plan` across a fleet: every host planned at once over its own
//! connection, then put together. A host that does not answer fails only its
//! VMs; a VM declared on one host and found on another is a move.

use super::fleet::{worker_panicked, Fleet};
use super::plan::{plan, Change, Entry, Options, Plan, Prune, Unchanged, VmPlan};
use crate::config::Declared;

/// Every VM names a host of the fleet, and with named hosts every VM has one.
fn check_hosts(fleet: &Fleet, declared: &Declared) -> anyhow::Result<()> {
    let names = fleet.names();
    let mut problems = Vec::new();
    for d in declared.vms.values() {
        match (&d.host, fleet.is_named()) {
            (Some(h), true) if !names.contains(&h.as_str()) => problems.push(format!(
                "vms.{}.host: {h:?} is not a host{}; hosts are {}",
                d.name,
                crate::suggest::did_you_mean(h, &names),
                names.join(", ")
            )),
            (Some(h), false) if fleet.connect_overrides_hosts => {
                problems.push(format!("vms.{}.host: {h:?}: {}", d.name, super::fleet::CONNECT_OVERRIDES))
            }
            (Some(h), false) => problems.push(format!(
                "vms.{}.host: {h:?}, but there are no \"hosts\": declare them in the file or the settings",
                d.name
            )),
            (None, true) => problems.push(format!(
                "vms.{}: no host: set \"host\" (one of {}) in the VM or in defaults",
                d.name,
                names.join(", ")
            )),
            _ => {}
        }
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(crate::config::ConfigError::Invalid(format!(
            "the declarative file: {} problem(s); nothing was changed:\n  {}",
            problems.len(),
            problems.join("\n  ")
        ))
        .into()),
    }
}

/// The plan across the fleet: each host planned at once with its own VMs
/// (and its own pool in scope for `--prune`). A host that does not answer
/// fails only its VMs. A VM declared on one host but found on another is a
/// move: it needs `--recreate`, and its project disk stays behind.
///
/// `only` (`--host`): plan that host alone; VMs declared elsewhere are left
/// out, and a dependency on one of them is taken to be in place.
pub fn plan_fleet(fleet: &Fleet, declared: &Declared, opts: Options, only: Option<&str>) -> anyhow::Result<Plan> {
    check_hosts(fleet, declared)?;
    let hosts = fleet.select(only)?;
    let (settings, vms) = (declared.settings.clone(), declared.vms.clone());
    let answers = fleet.ask(&hosts, move |h, ctx| {
        let mine = Declared {
            settings: settings.clone(),
            vms: vms.iter().filter(|(_, d)| d.host == h.name).map(|(k, v)| (k.clone(), v.clone())).collect(),
        };
        plan(&ctx, &mine, opts)
    });
    let mut all = Plan::of(vec![]);
    for (h, answer) in answers {
        match answer {
            Ok(p) => all.vms.extend(p.vms.into_iter().map(|v| VmPlan { host: h.name.clone(), ..v })),
            // Only a host that cannot be reached fails alone; bad input anywhere stops everything.
            Err(e) if crate::exit::kind(&e) == crate::error::Kind::Environment || worker_panicked(&e) => {
                let error = format!("{e:#}");
                for d in declared.vms.values().filter(|d| d.host == h.name) {
                    let entry = Entry::Unreachable { error: error.clone() };
                    all.vms.push(VmPlan { host: h.name.clone(), ..VmPlan::new(&d.name, entry) });
                }
                all.hosts_down.push(error);
            }
            Err(e) => return Err(e),
        }
    }
    moves(&mut all.vms, opts);
    left_for_their_hosts(&mut all.vms, declared);
    all.recount(opts);
    Ok(all)
}

/// A VM the file declares on a host that did not answer is not "not in
/// the file" where it lives now: it is left as it is, never pruned.
fn left_for_their_hosts(vms: &mut [VmPlan], declared: &Declared) {
    for p in vms.iter_mut() {
        if !matches!(p.entry, Entry::NotInFile | Entry::Prune(Prune { moved_to: None })) {
            continue;
        }
        if let Some(d) = declared.vms.get(&p.name) {
            p.entry = Entry::DeclaredElsewhere { host: d.host.clone().unwrap_or_default() };
        }
    }
}

/// A VM to create on one host that another host has (not in the file there)
/// is moving. Without `--recreate` nothing happens and the plan says so; with
/// it, it is created on its new host and destroyed on the old one, keeping
/// the project disk there (disks do not cross hosts by themselves).
fn moves(vms: &mut Vec<VmPlan>, opts: Options) {
    let mut gone = Vec::new();
    for i in 0..vms.len() {
        if !matches!(vms[i].entry, Entry::Create(_)) {
            continue;
        }
        let Some(j) = vms.iter().position(|o| {
            o.name == vms[i].name && o.host != vms[i].host && matches!(o.entry, Entry::NotInFile | Entry::Prune(_))
        }) else {
            continue;
        };
        let (from, to) = (vms[j].host.clone().unwrap_or_default(), vms[i].host.clone().unwrap_or_default());
        if opts.recreate {
            if let Entry::Create(c) = &mut vms[i].entry {
                c.moved_from = Some(from);
            }
            vms[j].entry = Entry::Prune(Prune { moved_to: Some(to) });
        } else {
            let changes = vec![Change::Host { from, to }];
            vms[i].entry = Entry::Unchanged(Unchanged { changes, restart_pending: false });
            gone.push(j);
        }
    }
    gone.sort_unstable();
    for j in gone.into_iter().rev() {
        vms.remove(j);
    }
}
