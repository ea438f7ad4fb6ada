//! The fixture of a test that boots a guest: the test image from its
//! environment variable (a clear failure where it is not set or not there),
//! the guest-boot lock held for the whole test (one guest at a time: each
//! wants both cores), an env of its own (settings file, pool, ssh key, port)
//! with the image as base image, and the cleanup guard for the VMs it names.
//! A failing test shows each VM's serial console and libvirt's domain log
//! before the cleanup.

use std::fs::File;

use nix::fcntl::FlockArg;
use std::ops::{Deref, DerefMut};
use std::path::Path;

use super::{require_root_libvirt, tail, Cleanup, Env};

/// The lock every guest-booting test holds, and what one wraps a run of
/// them in by hand: `flock /tmp/project-vm-guest-boot.lock cargo test ...`.
pub const GUEST_BOOT_LOCK: &str = "/tmp/project-vm-guest-boot.lock";

/// The image in `var`, failing (never skipping: these tests run on purpose)
/// with what to do where it is not set or not a file.
pub fn test_image(var: &str) -> String {
    let Ok(path) = std::env::var(var) else {
        panic!(
            "{var} is not set: this test boots a guest from it. Build it with tests/images/build-debian.sh \
             (scripts/test.sh does, and sets {var}), or set {var} to an image it built"
        )
    };
    assert!(Path::new(&path).is_file(), "{var}={path}: no such file (tests/images/build-debian.sh builds it)");
    path
}

/// Takes the guest-boot lock, waiting for it if another test holds it. Run
/// under `flock` on the same file, the lock is already ours through the
/// descriptor flock handed down: it is taken through that one (the same open
/// file, so no wait), never through a second open that would wait forever.
pub fn guest_boot_lock() -> File {
    let path = Path::new(GUEST_BOOT_LOCK);
    let file = inherited(path).unwrap_or_else(|| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    });
    if flock(&file, FlockArg::LockExclusiveNonblock).is_err() {
        eprintln!("waiting for {} (another test is booting a guest)", path.display());
        flock(&file, FlockArg::LockExclusive).unwrap_or_else(|e| panic!("locking {}: {e}", path.display()));
    }
    file
}

/// flock(2) itself: the lock goes with the open file (closing our last
/// descriptor on it releases a lock we took; one flock(1) holds stays). Not
/// nix's `Flock`, whose drop would unlock an inherited lock for its holder.
#[allow(deprecated)]
fn flock(file: &File, arg: FlockArg) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    nix::fcntl::flock(file.as_raw_fd(), arg)
}

/// A descriptor on `path` this process inherited, duplicated.
fn inherited(path: &Path) -> Option<File> {
    use std::os::fd::BorrowedFd;
    for e in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        if std::fs::read_link(e.path()).is_ok_and(|l| l == path) {
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            // SAFETY: the descriptor is open (just listed) and only borrowed to be duplicated.
            let owned = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned().ok()?;
            return Some(File::from(owned));
        }
    }
    None
}

/// One guest-booting test's world; derefs to its [`Env`].
pub struct Guest {
    pub env: Env,
    /// The image file, and the name it is imported under (the base image).
    pub image: String,
    pub image_name: String,
    vms: Vec<String>,
    // Dropped in this order: the cleanup first, the lock last.
    pub cleanup: Cleanup,
    _lock: File,
}

impl Guest {
    /// The bookworm test image (PROJECT_VM_TEST_IMAGE) as base image `debian`.
    pub fn new(tag: &str, ssh_port: u16, vms: &[&str]) -> Guest {
        Guest::with_image("PROJECT_VM_TEST_IMAGE", "debian", tag, ssh_port, vms)
    }

    /// The image in `var` as base image `name`; `vms` are the VMs the test
    /// makes (destroyed at the end, explained on failure).
    pub fn with_image(var: &str, name: &str, tag: &str, ssh_port: u16, vms: &[&str]) -> Guest {
        require_root_libvirt();
        remember_panics();
        let image = test_image(var);
        let lock = guest_boot_lock();
        let env = Env::new(tag, ssh_port, serde_json::json!({ "base_image": name }));
        let cleanup = Cleanup::of(&env, vms);
        Guest {
            env,
            image,
            image_name: name.into(),
            vms: vms.iter().map(|v| v.to_string()).collect(),
            cleanup,
            _lock: lock,
        }
    }

    /// `image import` of the test image under its name.
    pub fn import(&self) {
        self.env.run(&["image", "import", &self.image, "--name", &self.image_name]).ok();
    }
}

impl Deref for Guest {
    type Target = Env;
    fn deref(&self) -> &Env {
        &self.env
    }
}

impl DerefMut for Guest {
    fn deref_mut(&mut self) -> &mut Env {
        &mut self.env
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for vm in &self.vms {
                let serial = format!("/var/log/libvirt/qemu/project-{vm}-serial.log");
                let qemu = format!("/var/log/libvirt/qemu/project-{vm}.log");
                show_tails(&[(&serial, 80), (&qemu, 30)]);
            }
            // Said again after the logs, so that the last lines of a long
            // run's output (all a CI summary may show) say what failed.
            if let Some(failure) = LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()).take() {
                eprintln!("===== the failure, again =====\n{failure}");
            }
        }
    }
}

/// The message of the last panic of this process (the hook below).
static LAST_PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Keeps each panic's message (and still prints it as the default hook does).
fn remember_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(info.to_string());
            default(info);
        }));
    });
}

/// Prints the last lines of each file (a failing test's evidence).
pub fn show_tails(files: &[(&str, usize)]) {
    for (path, n) in files {
        eprintln!("===== {path} (last {n} lines) =====\n{}", tail(path, *n));
    }
}
