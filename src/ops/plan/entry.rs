//! One VM's part of a plan: an [`Entry`] per action, each carrying exactly
//! what `apply` needs to carry it out, and nothing to unwrap. Its JSON stays
//! the flat record the README shows (`action`, `changes`, `start`, ...).

use serde::{Serialize, Serializer};

use super::change::Change;
use crate::ops::create::CreateRequest;
use crate::spec::VmName;

/// The action, as reports name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Create,
    Update,
    Nothing,
    /// In the file's place, not in the file: destroyed with `--prune`.
    Prune,
    /// Owned VM not in the file, left alone (no `--prune`).
    NotInFile,
    /// Its host did not answer: nothing can be planned (the error says why).
    Unreachable,
}

/// A VM to create.
#[derive(Debug, Clone)]
pub struct Create {
    pub request: CreateRequest,
    /// Start it after (autostart).
    pub start: bool,
    /// Half-made: a create (or destroy) was interrupted. `apply` undoes what
    /// is left, keeping the project disk, and creates it again.
    pub interrupted: bool,
    /// The fleet host it moves from (its project disk stays there).
    pub moved_from: Option<String>,
}

/// An existing VM changed in place: at least one change that applies, or a
/// start or restart.
#[derive(Debug, Clone)]
pub struct Update {
    pub changes: Vec<Change>,
    /// It will be started (autostart and not running).
    pub start: bool,
    /// It will be restarted (`--restart`, running, and a next-restart change
    /// now or pending from an earlier apply).
    pub restart: bool,
    /// Running with memory or CPUs that differ from its definition.
    pub restart_pending: bool,
}

/// An existing VM rebuilt (`--recreate` and a change that needs it): its
/// project disk is kept.
#[derive(Debug, Clone)]
pub struct Recreate {
    pub request: CreateRequest,
    pub changes: Vec<Change>,
    pub restart_pending: bool,
}

/// An existing VM provisioned again in place (`--reconfigure` and a
/// change only that carries out), its applying changes made first.
#[derive(Debug, Clone)]
pub struct Reconfigure {
    pub request: CreateRequest,
    pub changes: Vec<Change>,
    pub restart_pending: bool,
}

/// An existing VM that `apply` leaves as it is; its changes (if any) are
/// reported only: not applied, needing `--recreate`, or impossible.
#[derive(Debug, Clone, Default)]
pub struct Unchanged {
    pub changes: Vec<Change>,
    /// Running with memory or CPUs that differ from its definition: an
    /// earlier change waits for a restart.
    pub restart_pending: bool,
}

/// A VM to destroy (its project disk kept unless `--delete-data`).
#[derive(Debug, Clone, Default)]
pub struct Prune {
    /// The fleet host it moves to: its project disk stays here whatever
    /// `--delete-data` says.
    pub moved_to: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Entry {
    Create(Create),
    Update(Update),
    Recreate(Recreate),
    Reconfigure(Reconfigure),
    Unchanged(Unchanged),
    Prune(Prune),
    /// Owned, in scope, not in the file, and no `--prune`: kept.
    NotInFile,
    /// Its host did not answer: the error says why.
    Unreachable {
        error: String,
    },
    /// Not in the file here, but the file declares it on `host`, which did
    /// not answer: left as it is, never pruned.
    DeclaredElsewhere {
        host: String,
    },
}

#[derive(Debug, Clone)]
pub struct VmPlan {
    /// The fleet host (only with `hosts`).
    pub host: Option<String>,
    pub name: VmName,
    pub entry: Entry,
}

impl VmPlan {
    pub fn new(name: &VmName, entry: Entry) -> VmPlan {
        VmPlan { host: None, name: name.clone(), entry }
    }

    /// How reports name it: `web`, or `web (gpu)` on a fleet host.
    pub fn label(&self) -> String {
        match &self.host {
            Some(h) => format!("{} ({h})", self.name),
            None => self.name.to_string(),
        }
    }

    pub fn action(&self) -> Action {
        match &self.entry {
            Entry::Create(_) => Action::Create,
            Entry::Update(_) | Entry::Recreate(_) | Entry::Reconfigure(_) => Action::Update,
            Entry::Unchanged(_) | Entry::DeclaredElsewhere { .. } => Action::Nothing,
            Entry::Prune(_) => Action::Prune,
            Entry::NotInFile => Action::NotInFile,
            Entry::Unreachable { .. } => Action::Unreachable,
        }
    }

    /// True when `apply` would change something.
    pub fn acts(&self) -> bool {
        match &self.entry {
            Entry::Create(_) | Entry::Update(_) | Entry::Recreate(_) | Entry::Reconfigure(_) | Entry::Prune(_) => true,
            Entry::Unchanged(_) | Entry::NotInFile | Entry::Unreachable { .. } | Entry::DeclaredElsewhere { .. } => {
                false
            }
        }
    }

    /// This entry stands for the file's declaration of the VM (its
    /// `depends_on` hold), not for a VM found beside the file.
    pub fn is_declared(&self) -> bool {
        match &self.entry {
            Entry::Create(_) | Entry::Update(_) | Entry::Recreate(_) | Entry::Reconfigure(_) | Entry::Unchanged(_) => {
                true
            }
            Entry::Unreachable { .. } => true,
            Entry::Prune(_) | Entry::NotInFile | Entry::DeclaredElsewhere { .. } => false,
        }
    }

    pub fn changes(&self) -> &[Change] {
        match &self.entry {
            Entry::Update(u) => &u.changes,
            Entry::Recreate(r) => &r.changes,
            Entry::Reconfigure(r) => &r.changes,
            Entry::Unchanged(u) => &u.changes,
            Entry::Create(_)
            | Entry::Prune(_)
            | Entry::NotInFile
            | Entry::Unreachable { .. }
            | Entry::DeclaredElsewhere { .. } => &[],
        }
    }

    /// It will be started.
    pub fn start(&self) -> bool {
        match &self.entry {
            Entry::Create(c) => c.start,
            Entry::Update(u) => u.start,
            _ => false,
        }
    }

    /// It will be restarted.
    pub fn restart(&self) -> bool {
        matches!(&self.entry, Entry::Update(u) if u.restart)
    }

    /// It will be rebuilt.
    pub fn recreate(&self) -> bool {
        matches!(self.entry, Entry::Recreate(_))
    }

    /// It will be provisioned again in place.
    pub fn reconfigure(&self) -> bool {
        matches!(self.entry, Entry::Reconfigure(_))
    }

    pub fn restart_pending(&self) -> bool {
        match &self.entry {
            Entry::Update(u) => u.restart_pending,
            Entry::Recreate(r) => r.restart_pending,
            Entry::Reconfigure(r) => r.restart_pending,
            Entry::Unchanged(u) => u.restart_pending,
            _ => false,
        }
    }

    pub fn interrupted(&self) -> bool {
        matches!(&self.entry, Entry::Create(c) if c.interrupted)
    }

    /// Moving between hosts: `from HOST` on the create, `to HOST` on the destroy.
    pub fn moved(&self) -> Option<String> {
        match &self.entry {
            Entry::Create(Create { moved_from: Some(h), .. }) => Some(format!("from {h}")),
            Entry::Prune(Prune { moved_to: Some(h) }) => Some(format!("to {h}")),
            _ => None,
        }
    }

    /// Why nothing could be planned, or why nothing is done.
    pub fn error(&self) -> Option<String> {
        match &self.entry {
            Entry::Unreachable { error } => Some(error.clone()),
            Entry::DeclaredElsewhere { host } => {
                Some(format!("declared on host {host}, which did not answer: left as it is"))
            }
            _ => None,
        }
    }
}

/// As JSON: the flat record of every action.
impl Serialize for VmPlan {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Shown<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            host: Option<&'a str>,
            name: &'a str,
            action: Action,
            #[serde(skip_serializing_if = "Option::is_none")]
            error: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            moved: Option<String>,
            changes: &'a [Change],
            start: bool,
            restart: bool,
            restart_pending: bool,
            recreate: bool,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            reconfigure: bool,
            interrupted: bool,
        }
        Shown {
            host: self.host.as_deref(),
            name: self.name.as_str(),
            action: self.action(),
            error: self.error(),
            moved: self.moved(),
            changes: self.changes(),
            start: self.start(),
            restart: self.restart(),
            restart_pending: self.restart_pending(),
            recreate: self.recreate(),
            reconfigure: self.reconfigure(),
            interrupted: self.interrupted(),
        }
        .serialize(s)
    }
}

/// One line per VM, then one per change, for people.
pub fn describe(p: &VmPlan) -> Vec<String> {
    let mut lines = vec![format!("{}: {}", p.label(), head(p))];
    if p.restart_pending() && !p.restart() {
        lines.push(
            "  restart pending: the running guest has not picked up its new memory/cpus (apply --restart)".into(),
        );
    }
    lines.extend(p.changes().iter().map(Change::describe));
    lines
}

/// What is done to the VM, after its label.
fn head(p: &VmPlan) -> String {
    match &p.entry {
        Entry::Create(c) => format!(
            "create{}{}{}",
            c.moved_from.as_ref().map(|h| format!(" (moved from {h}; new project disk)")).unwrap_or_default(),
            if c.start { ", start" } else { "" },
            if c.interrupted { " (half-made by an interrupted run: undone first, project disk kept)" } else { "" }
        ),
        Entry::Update(u) => {
            let what: Vec<&str> = [(u.restart, "restart"), (u.start, "start")]
                .into_iter()
                .filter_map(|(yes, what)| yes.then_some(what))
                .collect();
            match what.is_empty() {
                true => "update".into(),
                false => format!("update, {}", what.join(", ")),
            }
        }
        Entry::Recreate(_) => "update, recreate (project disk kept)".into(),
        Entry::Reconfigure(_) => {
            "update, reconfigure (provisioned again in place; host key, machine-id and disks kept)".into()
        }
        Entry::Unchanged(_) => "nothing to do".into(),
        Entry::DeclaredElsewhere { .. } => p.error().unwrap_or_default(),
        Entry::Prune(Prune { moved_to: Some(h) }) => format!("destroy (moved to {h}; its project disk is kept here)"),
        Entry::Prune(Prune { moved_to: None }) => "destroy (not in the file; --prune)".into(),
        Entry::Unreachable { error } => format!("not planned: {error}"),
        Entry::NotInFile => "not in the file; kept (--prune would destroy it, keeping its project disk)".into(),
    }
}
