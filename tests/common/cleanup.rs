//! The one cleanup guard: a test registers what it makes (VMs, domains,
//! volumes, pools, files, users, mounts) as it makes them, and the guard
//! removes exactly those when it is dropped, after the test's last line or
//! while a failed assertion unwinds. Nothing it was not told of is touched.
//!
//! Steps run in the reverse order of registration, as a stack of undo steps:
//! what was made last goes first (a VM before its pool, a pool before its
//! directory, a mount before the directory it is on).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Env;

/// The URI every test talks to unless it says otherwise.
pub const SYSTEM: &str = "qemu:///system";

enum Step {
    /// `project-vm destroy NAME` through the env's settings and URI.
    Vm(Box<Env>, String),
    /// `apply --prune --delete-data` of an empty file: every VM of the env's
    /// own pools (the fleet's, where the env has hosts).
    Prune(Box<Env>),
    Domain {
        uri: String,
        name: String,
    },
    Volume {
        uri: String,
        pool: String,
        name: String,
    },
    Pool {
        uri: String,
        name: String,
    },
    Path(PathBuf),
    User(String),
    Unmount(PathBuf),
}

#[derive(Default)]
pub struct Cleanup {
    steps: Vec<Step>,
}

impl Cleanup {
    pub fn new() -> Cleanup {
        Cleanup::default()
    }

    /// A guard for `env` (its pool and its directory) and the VMs `vms` the
    /// test makes through it.
    pub fn of(env: &Env, vms: &[&str]) -> Cleanup {
        let mut c = Cleanup::new();
        c.env(env).vms(env, vms);
        c
    }

    /// `env`'s directory and its pool (on the env's URI as it is now).
    pub fn env(&mut self, env: &Env) -> &mut Self {
        self.path(&env.dir);
        self.pool_on(env.libvirt_uri(), &env.pool)
    }

    /// VMs made through `env` (as it is now: its settings file and URI).
    pub fn vms(&mut self, env: &Env, names: &[&str]) -> &mut Self {
        for n in names {
            self.push(Step::Vm(Box::new(env.clone()), n.to_string()));
        }
        self
    }

    /// Every VM in `env`'s pools, whatever their names.
    pub fn prune(&mut self, env: &Env) -> &mut Self {
        self.push(Step::Prune(Box::new(env.clone())))
    }

    /// A domain the test defined by hand on qemu:///system.
    pub fn domain(&mut self, name: &str) -> &mut Self {
        self.domain_on(SYSTEM, name)
    }

    /// A domain the test defined by hand on `uri`.
    pub fn domain_on(&mut self, uri: &str, name: &str) -> &mut Self {
        self.push(Step::Domain { uri: uri.into(), name: name.into() })
    }

    /// A volume the test made by hand in `pool` on qemu:///system.
    pub fn volume(&mut self, pool: &str, name: &str) -> &mut Self {
        self.push(Step::Volume { uri: SYSTEM.into(), pool: pool.into(), name: name.into() })
    }

    /// A pool on qemu:///system (stopped and undefined; its files are the
    /// business of a registered path).
    pub fn pool(&mut self, name: &str) -> &mut Self {
        self.pool_on(SYSTEM, name)
    }

    /// A pool on `uri`.
    pub fn pool_on(&mut self, uri: &str, name: &str) -> &mut Self {
        self.push(Step::Pool { uri: uri.into(), name: name.into() })
    }

    /// A file or a directory (removed with all it holds).
    pub fn path(&mut self, path: impl AsRef<Path>) -> &mut Self {
        self.push(Step::Path(path.as_ref().to_path_buf()))
    }

    /// A user the test made: its processes are stopped, then the user and
    /// its home are removed.
    pub fn user(&mut self, name: &str) -> &mut Self {
        self.push(Step::User(name.into()))
    }

    /// A filesystem the test mounted.
    pub fn unmount(&mut self, point: impl AsRef<Path>) -> &mut Self {
        self.push(Step::Unmount(point.as_ref().to_path_buf()))
    }
}

impl Cleanup {
    fn push(&mut self, step: Step) -> &mut Self {
        self.steps.push(step);
        self
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        while let Some(step) = self.steps.pop() {
            step.undo();
        }
    }
}

impl Step {
    fn undo(self) {
        match self {
            Step::Vm(env, name) => {
                let _ = env.cmd(&["destroy", &name]).stdout(Stdio::null()).stderr(Stdio::null()).status();
            }
            Step::Prune(env) => {
                let empty = env.dir.join("empty.json");
                let _ = std::fs::write(&empty, r#"{"vms": {}}"#);
                let _ = env.run(&["apply", "-f", empty.to_str().unwrap(), "--prune", "--delete-data"]);
            }
            Step::Domain { uri, name } => quiet_virsh(&uri, &["undefine", &name]),
            Step::Volume { uri, pool, name } => quiet_virsh(&uri, &["vol-delete", "--pool", &pool, &name]),
            Step::Pool { uri, name } => {
                quiet_virsh(&uri, &["pool-destroy", &name]);
                quiet_virsh(&uri, &["pool-undefine", &name]);
            }
            Step::Path(p) => match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {
                    let _ = std::fs::remove_dir_all(&p);
                }
                Ok(_) => {
                    let _ = std::fs::remove_file(&p);
                }
                Err(_) => {}
            },
            Step::User(name) => remove_user(&name),
            Step::Unmount(p) => {
                let _ = Command::new("umount").arg(&p).output();
            }
        }
    }
}

fn quiet_virsh(uri: &str, args: &[&str]) {
    let _ = Command::new("virsh").arg("-c").arg(uri).args(args).output();
}

/// Stops every process of user `name` (SIGTERM, then SIGKILL after 10 s:
/// all of them were started by the test that made the user), then removes
/// the user and its home. A user that is not there is left alone.
pub fn remove_user(name: &str) {
    let Ok(Some(user)) = nix::unistd::User::from_name(name) else { return };
    let signal = |sig| {
        for pid in processes_of(user.uid.as_raw()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
    };
    signal(nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !processes_of(user.uid.as_raw()).is_empty() {
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(nix::sys::signal::Signal::SIGKILL);
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("userdel").args(["--remove", name]).output().unwrap();
    if !out.status.success() {
        eprintln!("userdel {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let _ = std::fs::remove_dir_all(&user.dir);
}

/// The pids of the processes whose owner is `uid`.
pub fn processes_of(uid: u32) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<i32>().ok()?;
            e.metadata().ok().filter(|m| m.uid() == uid).map(|_| pid)
        })
        .collect()
}
