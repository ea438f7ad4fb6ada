//! Port forwards (declared and `forward`) and `watch`.
//!
//! - Bad input (port 0, a port given twice, one two VMs of a file share)
//!   is refused before anything connects: no daemon needed.
//! - `watch` on libvirt's test driver, in-process: a project-vm domain's
//!   lifecycle comes out in order, a foreign domain's does not.
//! - On a real host (root, libvirtd; `#[ignore]`d, run by scripts/test.sh):
//!   a port in use, a privileged port, another VM's port and a duplicate are
//!   refused with exit 2 and nothing made; and one booted guest serves a web
//!   page reached through a declared port and through `forward`, while
//!   `watch --json` sees it start, stop and be destroyed, in order.
//!   Traffic only to loopback.

mod common;

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use project_vm::libvirt::{self, domain_xml, metadata::Ownership, metadata::Phase};
use project_vm::ops::watch::{self, HostWatch};
use project_vm::settings::{Accel, Network};
use project_vm::spec::{Resources, Size, VmName, VmSpec};
use serde_json::json;

fn run_bin(args: &[&str], config: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("PROJECT_VM_CONFIG", config)
        .env_remove("PROJECT_VM_URI")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn offline_config(dir: &std::path::Path) -> std::path::PathBuf {
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        r#"{"accel":"tcg","network":{"type":"user","ssh_port":22022},"ssh_authorized_keys":["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOrUuPHcX0EBHf+EB9Nl7gklkDq2TbK6HXAbiUZmjLCk k"],"storage_dir":"/nonexistent/pv"}"#,
    )
    .unwrap();
    cfg
}

#[test]
fn ports_that_cannot_work_are_refused_before_anything_connects() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = offline_config(dir.path());
    // A URI nothing answers on: each refusal comes before a connection.
    let uri = "qemu+unix:///system?socket=/nonexistent/libvirt-sock";
    let (code, _, err) = run_bin(&["--connect", uri, "create", "web", "--port", "0:80"], &cfg);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("0 is not a port"), "{err}");
    let (code, _, err) = run_bin(&["--connect", uri, "create", "web", "--port", "8080:80:x"], &cfg);
    assert_eq!(code, 2, "{err}");
    let file = dir.path().join("vms.json");
    std::fs::write(
        &file,
        r#"{"vms": {"a": {"ports": [{"host": 28090, "guest": 80}]},
                    "b": {"ports": [{"host": 28090, "guest": 8000}]},
                    "c": {"ports": [{"host": 28091, "guest": 0}]}}}"#,
    )
    .unwrap();
    let (code, _, err) = run_bin(&["--connect", uri, "plan", "-f", file.to_str().unwrap()], &cfg);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("vms.b.ports: host port 28090/tcp (127.0.0.1:28090 -> 8000/tcp) is vms.a's too"), "{err}");
    assert!(err.contains("0 is not a port"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    // forward: a local port that is taken, or given twice, before any VM is looked up.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, _, err) = run_bin(&["--connect", uri, "forward", "web", &format!("{port}:80")], &cfg);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("in use on this host now"), "{err}");
    let (code, _, err) = run_bin(&["--connect", uri, "forward", "web", "28092:80", "28092:81"], &cfg);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("given twice"), "{err}");
}

fn test_spec(name: &str) -> VmSpec {
    VmSpec {
        name: VmName::parse(name).unwrap(),
        resources: Resources { memory: Size(256 << 20), cpus: 1, disk: Size(1 << 30), project_disk: Size(1 << 30) },
        base_image: "base.qcow2".into(),
        accel: Accel::Tcg,
        network: Network::User { ssh_port: 22022 },
        ssh_user: "dev".into(),
        ssh_port: Some(22022),
        tailnet: None,
        autostart: false,
        features: vec![],
        firmware: Default::default(),
        network_config: None,
        hostdevs: vec![],
        shares: vec![],
        ports: vec!["8080:80".parse().unwrap()],
        stage_snapshots: false,
        cloud_init_hash: String::new(),
        checks: vec![],
        application_script: false,
    }
}

/// The test driver's own XML for a domain: its `test` type, and the
/// ownership record project-vm writes.
fn owned_xml(spec: &VmSpec) -> String {
    let own = Ownership {
        xmlns: None,
        version: 1,
        name: spec.name.to_string(),
        uuid: None,
        phase: Phase::Ready,
        pool: "pv".into(),
        root_volume: spec.name.root_volume(),
        data_volume: spec.name.data_volume(),
        data_kept: false,
        seed_volume: None,
        created: 1,
        host_key: None,
        spec_json: serde_json::to_string(spec).unwrap(),
    };
    let xml = domain_xml::build(spec, &own, &domain_xml::HostFiles::default()).to_xml();
    // The test driver knows only its own domain type and no devices it cannot fake.
    let start = xml.find("<devices>").unwrap();
    let end = xml.find("</devices>").unwrap() + "</devices>".len();
    format!("{}<devices/>{}", &xml[..start], &xml[end..]).replacen(r#"type="qemu""#, r#"type="test""#, 1)
}

fn next_events(w: &mut HostWatch, rx: &mpsc::Receiver<watch::Raw>, want: usize) -> Vec<(String, String)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < want && Instant::now() < deadline {
        if let Ok(raw) = rx.recv_timeout(Duration::from_millis(200)) {
            if let Some(e) = w.translate(raw, &[]) {
                got.push((e.vm.unwrap_or_default(), e.event.to_string()));
            }
        }
    }
    got
}

#[test]
fn watch_follows_project_vm_domains_and_only_those() {
    watch::event_loop().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("node.xml");
    std::fs::write(&node, "<node><cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads><active>2</active><mhz>2000</mhz></cpu><memory>8388608</memory></node>").unwrap();
    let uri = format!("test://{}", node.display());
    let conn = libvirt::connect(&uri).unwrap();
    let (tx, rx) = mpsc::channel();
    let mut w = HostWatch::new(0, None, uri.clone());
    w.attach_to(conn.clone(), &tx).unwrap();

    // Each step's events are read as they come, as `watch` reads them
    // (a domain undefined before its `defined` is read cannot be told
    // project-vm's any more).
    let mut got = Vec::new();
    let dom = conn.define_domain_xml(&owned_xml(&test_spec("web"))).unwrap();
    got.extend(next_events(&mut w, &rx, 1));
    let foreign = conn
        .define_domain_xml("<domain type='test'><name>project-other</name><memory unit='MiB'>128</memory><os><type arch='x86_64'>hvm</type></os></domain>")
        .unwrap();
    foreign.create().unwrap();
    dom.create().unwrap();
    got.extend(next_events(&mut w, &rx, 1));
    dom.suspend().unwrap();
    dom.resume().unwrap();
    dom.destroy().unwrap();
    dom.undefine().unwrap();
    foreign.destroy().unwrap();
    got.extend(next_events(&mut w, &rx, 4));
    let web = |e: &str| ("web".to_string(), e.to_string());
    assert_eq!(
        got,
        vec![web("defined"), web("started"), web("suspended"), web("resumed"), web("stopped"), web("undefined")],
        "a domain named project-* without project-vm's record is not project-vm's"
    );
    // project-vm's own events: what `start --wait` records from the guest's report.
    let dom = conn.define_domain_xml(&owned_xml(&test_spec("api"))).unwrap();
    dom.create().unwrap();
    assert_eq!(next_events(&mut w, &rx, 2).len(), 2, "defined, started");
    let report = |result: &'static str, errors: Vec<String>| project_vm::ops::ready::ReadyReport {
        name: "api".into(),
        result,
        cloud_init_status: result.into(),
        errors,
        waited_s: 1.0,
        report_latency_s: None,
        boot_id: "b1".into(),
        boot: project_vm::ops::ready::Boot::First,
        cloud_init: project_vm::ops::ready::CloudInitRun::Ran,
        application: None,
        checks: None,
    };
    watch::record_ready(&dom, &report("error", vec!["runcmd: exit 1".into()]));
    assert_eq!(next_events(&mut w, &rx, 1), vec![("api".to_string(), "cloud-init-failed".to_string())]);
    watch::record_ready(&dom, &report("done", vec![]));
    assert_eq!(next_events(&mut w, &rx, 1), vec![("api".to_string(), "ready".to_string())]);
    dom.destroy().unwrap();
    dom.undefine().unwrap();
    assert_eq!(next_events(&mut w, &rx, 2).len(), 2, "stopped, undefined");
    // Only the names asked for.
    let dom = conn.define_domain_xml(&owned_xml(&test_spec("db"))).unwrap();
    let raw = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(w.translate(raw, &[VmName::parse("web").unwrap()]).is_none());
    dom.undefine().unwrap();
}

/// A line at a time from a child's stdout, on a thread, so a test can wait
/// with a deadline.
fn http_get(port: u16) -> Result<String, String> {
    let mut s = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /hello.txt HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| e.to_string())?;
    Ok(body)
}

/// Retries for a while: the server needs a moment after ssh returns.
fn http_get_soon(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match http_get(port) {
            Ok(body) if body.contains("200") => return body,
            other if Instant::now() > deadline => panic!("GET 127.0.0.1:{port}: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

fn nothing_made(env: &Env, name: &str) {
    assert!(!virsh(&["dominfo", &format!("project-{name}")]).status.success(), "project-{name} was defined");
    assert!(
        env.vm_volumes().iter().all(|v| !v.contains(&format!("project-{name}-"))),
        "volumes were made: {:?}",
        env.vm_volumes()
    );
}

#[test]
#[ignore = "needs root and libvirtd on qemu:///system; run by scripts/test.sh"]
fn bad_ports_exit_2_and_make_nothing() {
    require_root_libvirt();
    let env = Env::new("ports-bad", 24700, json!({"base_image": "tiny"}));
    struct Cleanup<'a>(&'a Env);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            self.0.cleanup(&["pbad", "pother", "prace0", "prace1"]);
        }
    }
    let _c = Cleanup(&env);
    env.run(&["image", "import", tiny_image(&env.dir).to_str().unwrap()]).ok();
    let small = ["256M", "1", "2G", "--project-disk", "1G"];
    let create = |name: &str, ports: &[&str]| {
        let mut args = vec!["create", name, "--json"];
        args.extend(small);
        for p in ports {
            args.extend(["--port", p]);
        }
        env.run(&args)
    };
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = format!("{}:80", taken.local_addr().unwrap().port());
    let mut cases =
        vec![(vec![busy.as_str()], "in use on this host now"), (vec!["28100:80", "28100:81"], "given twice")];
    // Privileged as this kernel counts it (a container may let anyone bind 80).
    let floor: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .map_or(1024, |s| s.trim().parse().unwrap_or(1024));
    if floor > 80 {
        cases.push((vec!["80:80"], "privileged"));
    }
    for (ports, says) in cases {
        let r = create("pbad", &ports);
        assert_eq!(r.code, 2, "{ports:?}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{ports:?}: {}", r.stderr);
        nothing_made(&env, "pbad");
    }
    // A VM's declared port is never its ssh forward: the ssh port skips it.
    let made = create("pother", &["24700:80"]).ok().json();
    assert_eq!(made["create"]["ssh_port"], 24701, "{made}");
    // Another VM's ports (declared, or its ssh forward), whether or not it runs.
    for (port, says) in [("24700:8000", "forwarded to VM pother already"), ("24701:8000", "VM pother's ssh forward")] {
        let r = create("pbad", &[port]);
        assert_eq!(r.code, 2, "{port}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{port}: {}", r.stderr);
        nothing_made(&env, "pbad");
    }
    // Two creates at once declaring one port: one gets it, the other is refused.
    let racers: Vec<_> = ["prace0", "prace1"]
        .iter()
        .map(|n| {
            let mut args = vec!["create", n, "--json"];
            args.extend(small);
            args.extend(["--port", "28120:80"]);
            env.cmd(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    let mut codes: Vec<i32> =
        racers.into_iter().map(|c| c.wait_with_output().unwrap().status.code().unwrap_or(-1)).collect();
    codes.sort();
    assert_eq!(codes, [0, 2], "one create gets port 28120, the other is refused");
    // The same through a declarative file: plan and apply refuse, nothing changes.
    let file = env.dir.join("vms.json");
    std::fs::write(&file, json!({"vms": {"pbad": {"memory": "256M", "disk": "2G", "project_disk": "1G", "ports": [{"host": 24700, "guest": 80}]}}}).to_string()).unwrap();
    for verb in ["plan", "apply"] {
        let r = env.run(&[verb, "-f", file.to_str().unwrap()]);
        assert_eq!(r.code, 2, "{verb}: {}", r.stderr);
        assert!(r.stderr.contains("vms.pbad.ports") && r.stderr.contains("pother"), "{verb}: {}", r.stderr);
        nothing_made(&env, "pbad");
    }
    // A port change of an existing VM is planned for its next restart.
    std::fs::write(&file, json!({"vms": {"pother": {"memory": "256M", "cpus": 1, "disk": "2G", "project_disk": "1G", "image": "tiny", "ports": [{"host": 28103, "guest": 80}]}}}).to_string()).unwrap();
    let plan = env.run(&["plan", "-f", file.to_str().unwrap(), "--json"]).ok().json();
    let changes = plan["vms"][0]["changes"].as_array().unwrap().clone();
    let ports = changes.iter().find(|c| c["field"] == "ports").unwrap_or_else(|| panic!("{plan}"));
    assert_eq!(ports["class"], "next-restart", "{plan}");
}

fn image() -> String {
    std::env::var("PROJECT_VM_TEST_IMAGE")
        .expect("PROJECT_VM_TEST_IMAGE is not set: run scripts/test.sh, which builds the image")
}

#[test]
#[ignore = "boots a guest; needs root, libvirtd and PROJECT_VM_TEST_IMAGE; run by scripts/test.sh"]
fn a_guest_web_server_through_a_declared_port_and_forward_while_watch_follows() {
    require_root_libvirt();
    // One guest at a time (held until the end: dropped last).
    let _lock = guest_boot_lock();
    let img = image();
    let env = Env::new("ports", 24720, json!({"base_image": "debian"}));
    struct Guard<'a>(&'a Env);
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                let serial = "/var/log/libvirt/qemu/project-pweb-serial.log";
                eprintln!("===== {serial} (last 60 lines) =====\n{}", tail(serial, 60));
            }
            self.0.cleanup(&["pweb"]);
        }
    }
    let _g = Guard(&env);
    env.run(&["image", "import", &img, "--name", "debian"]).ok();

    let mut watcher =
        env.cmd(&["watch", "pweb", "--json"]).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let events = lines_of(&mut watcher);
    std::thread::sleep(Duration::from_millis(500));

    let t0 = Instant::now();
    env.run(&["create", "pweb", "1G", "2", "8G", "--project-disk", "1G", "--port", "28110:8000"]).ok();
    let ready = env.run(&["start", "pweb", "--wait", "--timeout", "900", "--json"]).ok().json();
    assert_eq!(ready["ready"]["result"], "done", "{ready}");
    eprintln!("TIMING create and start to ready: {:.1} s", t0.elapsed().as_secs_f64());

    let status = env.run(&["status", "pweb", "--json"]).ok().json();
    assert_eq!(status["ports"][0]["reach"], "127.0.0.1:28110", "{status}");
    // A web server in the guest, on all its addresses.
    env.ssh("pweb", "mkdir -p /tmp/www && echo hello-from-pweb > /tmp/www/hello.txt && cd /tmp/www && (setsid nohup python3 -m http.server 8000 >/dev/null 2>&1 &) ; true");
    let body = http_get_soon(28110);
    assert!(body.contains("hello-from-pweb"), "through the declared port: {body}");

    // forward: the same server through ssh with the pinned key.
    // In a process group of its own, as a terminal runs it: Ctrl-C reaches ssh too.
    let mut fwd = env
        .cmd(&["forward", "pweb", "28111:8000"])
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let said = lines_of(&mut fwd).recv_timeout(Duration::from_secs(60)).expect("forward reports once it listens");
    assert!(said.contains("forwarding 127.0.0.1:28111 -> pweb port 8000"), "{said}");
    let body = http_get(28111).unwrap();
    assert!(body.contains("hello-from-pweb"), "through forward: {body}");
    let group = nix::unistd::Pid::from_raw(-(fwd.id() as i32));
    nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGINT).unwrap();
    assert_eq!(fwd.wait().unwrap().code(), Some(130), "forward ends at Ctrl-C with 130");
    assert!(std::net::TcpListener::bind("127.0.0.1:28111").is_ok(), "the tunnel is gone with forward");

    env.run(&["stop", "pweb", "--force"]).ok();
    env.run(&["start", "pweb"]).ok();
    env.run(&["destroy", "pweb"]).ok();

    // watch saw it, in order.
    let seen = watched(&events, "pweb", "undefined", Duration::from_secs(20));
    let _ = interrupt(&mut watcher);
    eprintln!("watch saw: {seen:?}");
    let words: Vec<&str> = seen.iter().map(|(e, _)| e.as_str()).collect();
    let order = ["defined", "started", "ready", "stopped", "started", "stopped", "undefined"];
    assert!(in_order(&seen, &order), "watch saw {seen:?}, expected {order:?} in that order");
    assert!(seen.contains(&("stopped".into(), "destroyed".into())), "{seen:?}");
    assert!(!words.contains(&"resumed"), "QEMU resuming the CPUs it starts with is no resume: {seen:?}");
}

#[test]
#[ignore = "needs root and libvirtd (the system daemon and one of the test's own); run by scripts/test.sh"]
fn watch_follows_a_fleet_and_reconnects_after_a_daemon_restart() {
    require_root_libvirt();
    let d = common::daemon::OwnDaemon::start("pvwatch22", "C.UTF-8");
    let mut env = Env::new(
        "watch",
        24740,
        json!({"hosts": {"sys": {"uri": "qemu:///system"}, "own": {"uri": d.uri, "storage_dir": d.home.join("pool")}}}),
    );
    // No --connect: the settings' hosts are the fleet.
    env.uri = String::new();
    let sys_vm = format!("pws{}", std::process::id());
    struct Cleanup<'a>(&'a Env, String);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            let _ = virsh(&["undefine", &format!("project-{}", self.1)]);
            let _ = std::fs::remove_dir_all(&self.0.dir);
        }
    }
    let _c = Cleanup(&env, sys_vm.clone());
    // Only this test's VMs: other tests work on the system daemon too.
    let mut watcher =
        env.cmd(&["watch", &sys_vm, "pw", "--json"]).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let events = lines_of(&mut watcher);
    let next = |want: &str| -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = events.recv_timeout(left).unwrap_or_else(|_| panic!("no {want} event"));
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["event"] == want {
                return v;
            }
        }
    };
    let define = |name: &str, virsh: &dyn Fn(&[&str]) -> std::process::Output| {
        let xml = env.dir.join(format!("{name}.xml"));
        let mut spec = test_spec(name);
        spec.ports.clear();
        std::fs::write(&xml, owned_xml(&spec).replacen(r#"type="test""#, r#"type="qemu""#, 1)).unwrap();
        let out = virsh(&["define", xml.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    std::thread::sleep(Duration::from_millis(500));
    // Events from every host of the fleet, each named by its host.
    define(&sys_vm, &|a| virsh(a));
    let defined = next("defined");
    assert_eq!((defined["vm"].as_str(), defined["host"].as_str()), (Some(sys_vm.as_str()), Some("sys")), "{defined}");
    assert!(virsh(&["undefine", &format!("project-{sys_vm}")]).status.success());
    assert_eq!(next("undefined")["host"], "sys");
    // A daemon restart: said, survived, and its events flow again.
    d.restart();
    let gone = next("disconnected");
    assert_eq!(gone["host"], "own", "{gone}");
    assert!(gone["detail"].as_str().unwrap().contains("closed"), "{gone}");
    assert_eq!(next("reconnected")["host"], "own");
    define("pw", &|a| d.virsh(a));
    let defined = next("defined");
    assert_eq!((defined["vm"].as_str(), defined["host"].as_str()), (Some("pw"), Some("own")), "{defined}");
    assert!(d.virsh(&["undefine", "project-pw"]).status.success());
    assert_eq!(next("undefined")["vm"], "pw");
    assert_eq!(interrupt(&mut watcher), Some(130));
}
