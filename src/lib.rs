//! project-vm: one libvirt VM per project.
//!
//! Data flows one way: CLI arguments or a declarative file, plus the host
//! [`settings`], become a resolved [`spec::VmSpec`]; the [`ops`] turn specs into
//! libvirt objects through [`libvirt`]; reports come back for [`output`].

pub mod cli;
pub mod clock;
pub mod cloudinit;
pub mod config;
pub mod error;
pub mod exit;
pub mod fanout;
pub mod fault;
pub mod features;
pub mod files;
pub mod health;
pub mod images;
pub mod interrupt;
pub mod jsonfile;
pub mod libvirt;
pub mod lock;
pub mod man;
pub mod messages;
pub mod mounts;
pub mod ops;
pub mod output;
pub mod paths;
pub mod progress;
pub mod run;
pub mod secret;
pub mod settings;
pub mod spec;
pub mod suggest;
