//! A libvirt daemon of a test's own: the session daemon of a system user the
//! test makes, on a socket of its own, in the locale the test asks for. The
//! test may restart it or speak another language to it without touching the
//! host's daemon or another test's. Dropped: its domains' processes and the
//! daemon are killed and the user is removed.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::sh;

pub struct OwnDaemon {
    pub user: String,
    pub home: PathBuf,
    pub runtime: PathBuf,
    pub uri: String,
    lang: String,
}

impl OwnDaemon {
    /// Makes user `user` (home under /var/lib) and starts its daemon with
    /// `LANG=lang`.
    pub fn start(user: &str, lang: &str) -> OwnDaemon {
        let home = PathBuf::from(format!("/var/lib/{user}"));
        let runtime = PathBuf::from(format!("/run/{user}"));
        let d = OwnDaemon {
            user: user.into(),
            uri: format!("qemu+unix:///session?socket={}/libvirt/libvirt-sock", runtime.display()),
            home,
            runtime,
            lang: lang.into(),
        };
        d.kill_all();
        let _ = Command::new("userdel").args(["-r", user]).output();
        sh(&format!("useradd --system --create-home --home-dir {} --shell /usr/sbin/nologin {user}", d.home.display()));
        sh(&format!("chmod 0755 {}", d.home.display()));
        sh(&format!("install -d -o {user} -g {user} -m 0700 {}", d.runtime.display()));
        d.launch();
        d
    }

    fn launch(&self) {
        sh(&format!(
            "runuser -u {u} -- env -i HOME={h} XDG_RUNTIME_DIR={r} LANG={l} LANGUAGE={lg} PATH=/usr/sbin:/usr/bin:/sbin:/bin libvirtd -d",
            u = self.user,
            h = self.home.display(),
            r = self.runtime.display(),
            l = self.lang,
            lg = self.lang.split(['_', '.']).next().unwrap_or("C"),
        ));
        let t0 = Instant::now();
        while !Command::new("virsh").args(["-c", &self.uri, "version"]).output().is_ok_and(|o| o.status.success()) {
            assert!(t0.elapsed() < Duration::from_secs(20), "{}'s libvirtd did not answer on {}", self.user, self.uri);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The daemon's pid, from its pid file.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.runtime.join("libvirt/libvirtd.pid")).ok()?.trim().parse().ok()
    }

    /// Stops the daemon (SIGTERM, then SIGKILL after 20 s, as a service
    /// manager does at its stop timeout) and starts it again. Its running
    /// domains go on: QEMU does not belong to it. (A libvirtd with a client
    /// that listens for events was seen to outlast a SIGTERM by over 30 s on
    /// a loaded 2-core machine; what the tests need is the daemon gone.)
    pub fn restart(&self) {
        let pid = self.pid().expect("the daemon's pid file");
        sh(&format!("kill -TERM {pid}"));
        let gone = |within: Duration| {
            let t0 = Instant::now();
            while std::path::Path::new(&format!("/proc/{pid}/exe")).exists() {
                if t0.elapsed() > within {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            true
        };
        if !gone(Duration::from_secs(20)) {
            sh(&format!("kill -KILL {pid}"));
            assert!(gone(Duration::from_secs(10)), "libvirtd {pid} did not stop, even killed");
        }
        self.launch();
    }

    pub fn virsh(&self, args: &[&str]) -> std::process::Output {
        Command::new("virsh").arg("-c").arg(&self.uri).args(args).output().expect("virsh")
    }

    fn kill_all(&self) {
        let _ = Command::new("pkill").args(["-KILL", "-u", &self.user]).output();
        std::thread::sleep(Duration::from_millis(300));
    }
}

impl Drop for OwnDaemon {
    fn drop(&mut self) {
        self.kill_all();
        let _ = Command::new("userdel").args(["-r", &self.user]).output();
        let _ = std::fs::remove_dir_all(&self.runtime);
        let _ = std::fs::remove_dir_all(&self.home);
    }
}
