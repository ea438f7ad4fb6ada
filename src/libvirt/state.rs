//! A domain's run state as project-vm reports it, from libvirt's state
//! (one domain's, or a number from bulk statistics).

use serde::Serialize;
use virt::domain::{Domain, DomainState, DomainStateEnum};

/// What a domain is doing.
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
            Ok((s, _)) => State::from_known(s.known()),
            Err(_) => State::Other,
        }
    }

    /// From libvirt's number (`virDomainState`), as bulk statistics give it.
    pub fn from_raw(raw: u32) -> State {
        State::from_known(DomainStateEnum::from_raw(raw).known())
    }

    fn from_known(s: Option<DomainState>) -> State {
        match s {
            Some(DomainState::Running | DomainState::Blocked) => State::Running,
            Some(DomainState::Paused | DomainState::PMSuspended) => State::Paused,
            Some(DomainState::Shutoff) => State::Shutoff,
            Some(DomainState::Crashed) => State::Crashed,
            _ => State::Other,
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
