//! End to end on a real host: a guest boots from its overlay, cloud-init runs,
//! ssh works with a pinned host key, the project disk survives a re-create, and
//! the same works over qemu+ssh://. Needs root, libvirtd, and the test image
//! (PROJECT_VM_TEST_IMAGE, built by tests/images/build-debian.sh); run through
//! scripts/test.sh. Guests use TCG and user networking: nothing beyond loopback.

mod common;

use std::process::{Command, Stdio};

use common::*;

fn timing(what: &str, value: String) {
    eprintln!("TIMING {what}: {value}");
}

fn wait_ready(env: &Env, name: &str) -> serde_json::Value {
    let r = env.run(&["start", name, "--wait", "--timeout", "900", "--json"]).ok();
    let ready = r.json()["ready"].clone();
    assert_eq!(ready["result"], "done", "{ready}");
    timing(
        &format!("start {name} to ready"),
        format!(
            "{:.1} s (cloud-init finished -> reported: {:.3} s)",
            ready["waited_s"].as_f64().unwrap(),
            ready["report_latency_s"].as_f64().unwrap_or(-1.0)
        ),
    );
    ready
}

/// A later boot of a stopped VM: `start --wait` within a first-boot-sized
/// bound (a reporter that waits for a cloud-init that never comes cannot meet
/// it), reported as a later boot with `cloud_init` as expected ("ran": from
/// the cached instance; "disabled": its generator turned it off for the boot).
/// Leaves it running.
fn later_boot(env: &Env, name: &str, cloud_init: &str) -> serde_json::Value {
    let r = env.run(&["start", name, "--wait", "--timeout", "240", "--json"]);
    assert_eq!(r.code, 0, "a later start --wait of {name}: stdout {} stderr {}", r.stdout, r.stderr);
    let ready = r.json()["ready"].clone();
    assert_eq!(
        (ready["result"].as_str(), ready["boot"].as_str(), ready["cloud_init"].as_str()),
        (Some("done"), Some("later"), Some(cloud_init)),
        "{ready}"
    );
    // The pinned host key still matches (ssh checks it): no per-instance module ran again.
    assert_eq!(env.ssh(name, "cat /proc/sys/kernel/random/boot_id").trim(), ready["boot_id"].as_str().unwrap());
    timing(
        &format!("later start {name} to ready (cloud-init {cloud_init})"),
        format!("{:.1} s", ready["waited_s"].as_f64().unwrap()),
    );
    ready
}

fn graceful_stop(env: &Env, name: &str) {
    let stop = env.run(&["stop", name, "--timeout", "120", "--json"]).ok().json();
    assert_eq!(stop["result"], "graceful", "{stop}");
}

/// `cloud-init schema --system` in the guest finds nothing wrong with the
/// cloud-config project-vm generated, and cloud-init's status is a plain done.
fn assert_schema_clean(env: &Env, name: &str) {
    let r = env.run(&["ssh", name, "--", "sudo", "cloud-init", "schema", "--system", "2>&1"]);
    let out = format!("{}{}", r.stdout, r.stderr);
    assert_eq!(r.code, 0, "cloud-init schema --system in {name}:\n{out}");
    assert!(out.contains("Valid"), "{out}");
    for bad in ["Error", "WARNING", "eprecat", "Invalid"] {
        assert!(!out.contains(bad), "cloud-init schema --system in {name} says {bad}:\n{out}");
    }
    let status = env.ssh(name, "cloud-init status --long 2>&1 || true");
    assert!(status.contains("status: done") && !status.contains("degraded"), "{status}");
    let cfg = env.ssh(name, "cat /etc/cloud/cloud.cfg.d/90-project-vm.cfg");
    assert!(cfg.contains("manual_cache_clean: true"), "{cfg}");
}

fn gib(s: &str) -> f64 {
    s.trim().parse::<f64>().unwrap() / (1u64 << 30) as f64
}

#[test]
#[ignore = "boots guests; needs root, libvirtd and PROJECT_VM_TEST_IMAGE; run by scripts/test.sh"]
fn guest_boots_provisions_and_keeps_its_project_disk() {
    let env = Guest::new("e2e", 22200, &["e2e"]);
    env.import();

    // 1. create, start, wait for cloud-init.
    let created = env.run(&["create", "e2e", "1G", "2", "8G", "--project-disk", "2G", "--json"]).ok().json();
    timing("create", format!("{} ms", created["create"]["elapsed_ms"]));
    wait_ready(&env, "e2e");
    // The seed (private host key inside) is detached and deleted after the first ready boot.
    assert!(!env.volumes().contains(&"project-e2e-seed.iso".to_string()), "{:?}", env.volumes());
    let xml = String::from_utf8(virsh(&["dumpxml", "project-e2e"]).stdout).unwrap();
    assert!(!xml.contains("seed.iso"), "seed still attached");
    assert!(!xml.contains("PRIVATE KEY"), "secret in domain XML");

    // cloud-init's own validator in the guest: project-vm's cloud-config is clean.
    assert_schema_clean(&env, "e2e");

    // 2. The guest is what we asked for.
    assert_eq!(env.ssh("e2e", "hostname").trim(), "project-e2e");
    assert_eq!(env.ssh("e2e", "id -un").trim(), "dev");
    assert_eq!(env.ssh("e2e", "sudo -n id -u").trim(), "0", "passwordless sudo");
    let root = gib(&env.ssh("e2e", "df -B1 --output=size / | tail -1"));
    assert!((7.5..=8.0).contains(&root), "root filesystem is {root:.2} GiB, expected about 8");
    let mnt = env.ssh("e2e", "findmnt -no FSTYPE,LABEL /project");
    assert_eq!(mnt.split_whitespace().collect::<Vec<_>>(), vec!["ext4", "project"], "{mnt}");
    let project = gib(&env.ssh("e2e", "df -B1 --output=size /project | tail -1"));
    assert!((1.7..=2.0).contains(&project), "/project is {project:.2} GiB, expected about 2");
    // ssh verified the guest against the key pinned at create (StrictHostKeyChecking=yes).
    let guest_key = env.ssh("e2e", "sudo -n cat /etc/ssh/ssh_host_ed25519_key.pub");
    let pinned = std::fs::read_to_string(env.dir.join("state/project-vm/known_hosts")).unwrap();
    let guest_key_b64 = guest_key.split_whitespace().nth(1).unwrap();
    assert!(
        pinned.contains(&format!("project-e2e ssh-ed25519 {guest_key_b64}")),
        "pinned {pinned} vs guest {guest_key}"
    );

    // The serial console through libvirt (Ctrl-] leaves), and its log.
    let mut console = env
        .cmd(&["console", "e2e"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let stdin = console.stdin.as_mut().unwrap();
        stdin.write_all(b"\r").unwrap();
        std::thread::sleep(std::time::Duration::from_secs(3));
        stdin.write_all(&[0x1d]).unwrap();
    }
    let out = console.wait_with_output().unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "console: {}", String::from_utf8_lossy(&out.stderr));
    assert!(screen.contains("project-e2e login:"), "console showed: {screen:?}");
    let logs = env.run(&["logs", "e2e"]).ok().stdout;
    assert!(
        logs.contains("Cloud-init") && logs.contains("finished"),
        "serial log ends: {:?}",
        logs.lines().rev().take(10).collect::<Vec<_>>()
    );

    // 3. Data on the project disk, a marker on the root disk, graceful stop.
    let content = format!("project data {}", std::process::id());
    env.ssh("e2e", &format!("echo '{content}' > /project/keep.txt && sync && sudo touch /root-marker"));
    let stop = env.run(&["stop", "e2e", "--timeout", "120", "--json"]).ok().json();
    assert_eq!(stop["result"], "graceful", "{stop}");
    timing("stop", format!("{:.1} s", stop["seconds"].as_f64().unwrap()));

    // Later boots with cloud-init's packaged configuration (ds-identify finds
    // no seed now): the second from the cached instance, the third with
    // cloud-init disabled in the guest. Both report; nothing is provisioned again.
    later_boot(&env, "e2e", "ran");
    assert_eq!(env.ssh("e2e", "cat /project/keep.txt").trim(), content);
    env.ssh("e2e", "sudo touch /etc/cloud/cloud-init.disabled");
    graceful_stop(&env, "e2e");
    later_boot(&env, "e2e", "disabled");
    assert_eq!(env.ssh("e2e", "findmnt -no LABEL /project").trim(), "project", "fstab mounts it without cloud-init");
    graceful_stop(&env, "e2e");

    // 4. destroy --keep-data, create again: same data, new root disk.
    env.run(&["destroy", "e2e", "--keep-data"]).ok();
    let again = env.run(&["create", "e2e", "1G", "2", "8G", "--project-disk", "2G", "--json"]).ok().json();
    assert_eq!(again["create"]["data_reattached"], true);
    wait_ready(&env, "e2e");
    assert_eq!(env.ssh("e2e", "cat /project/keep.txt").trim(), content);
    assert_eq!(env.ssh("e2e", "test -e /root-marker && echo present || echo gone").trim(), "gone");
    assert_eq!(env.ssh("e2e", "touch /project/again && echo ok").trim(), "ok", "dev can write /project");

    // 5. destroy: nothing of it is left.
    env.run(&["destroy", "e2e"]).ok();
    assert_eq!(env.vm_volumes(), Vec::<String>::new());
    assert!(!virsh(&["dominfo", "project-e2e"]).status.success());
}

#[test]
#[ignore = "boots guests; needs root, libvirtd and PROJECT_VM_TEST_IMAGE; run by scripts/test.sh"]
fn cloud_init_failures_and_timeouts_have_their_own_exit_codes() {
    let env = Guest::new("fail", 22250, &["e2f"]);
    env.import();
    let user_data = env.dir.join("user-data.yaml");
    std::fs::write(&user_data, "#cloud-config\nruncmd:\n  - [sh, -c, 'echo failing on purpose; exit 3']\n").unwrap();
    env.run(&["create", "e2f", "1G", "2", "8G", "--project-disk", "1G", "--user-data", user_data.to_str().unwrap()])
        .ok();

    // A timeout leaves the VM running and says how to follow it.
    let r = env.run(&["start", "e2f", "--wait", "--timeout", "5"]);
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert!(r.stderr.contains("still running") && r.stderr.contains("logs e2f"), "{}", r.stderr);
    let state = String::from_utf8(virsh(&["domstate", "project-e2f"]).stdout).unwrap();
    assert_eq!(state.trim(), "running");

    // Waiting again sees cloud-init's error and names the failing module.
    let r = env.run(&["start", "e2f", "--wait", "--timeout", "900"]);
    assert_eq!(r.code, 5, "stdout {} stderr {}", r.stdout, r.stderr);
    assert!(r.stderr.contains("scripts_user") || r.stderr.contains("runcmd"), "{}", r.stderr);
    env.run(&["destroy", "e2f"]).ok();
}

/// An sshd on loopback that only this test's key may use, for qemu+ssh://.
fn start_sshd(env: &Env, port: u16) -> (KillOnDrop, String) {
    let d = env.dir.join("sshd");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    sh(&format!("ssh-keygen -q -t ed25519 -N '' -f {}/host_key", d.display()));
    std::fs::copy(env.key.with_extension("pub"), d.join("authorized_keys")).unwrap();
    let cfg = d.join("sshd_config");
    std::fs::write(
        &cfg,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nStrictModes no\nPidFile {d}/sshd.pid\n",
            d = d.display()
        ),
    )
    .unwrap();
    let child =
        Command::new("/usr/sbin/sshd").args(["-D", "-e", "-f"]).arg(&cfg).stderr(Stdio::null()).spawn().expect("sshd");
    // The client side verifies the loopback sshd's host key too.
    let host_pub = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
    let kh = d.join("known_hosts");
    std::fs::write(
        &kh,
        format!("[127.0.0.1]:{port} {}\n", host_pub.split_whitespace().take(2).collect::<Vec<_>>().join(" ")),
    )
    .unwrap();
    let wrapper = d.join("ssh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec ssh -i {key} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={kh} \"$@\"\n",
            key = env.key.display(),
            kh = kh.display()
        ),
    )
    .unwrap();
    sh(&format!("chmod +x {}", wrapper.display()));
    for _ in 0..50 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let uri = format!("qemu+ssh://root@127.0.0.1:{port}/system?command={}", wrapper.display());
    (KillOnDrop(child), uri)
}

#[test]
#[ignore = "boots guests; needs root, libvirtd and PROJECT_VM_TEST_IMAGE; run by scripts/test.sh"]
fn everything_goes_through_libvirt_over_qemu_ssh() {
    // The guard destroys e2r through qemu:///system (the same daemon) once the sshd is gone.
    let mut env = Guest::new("remote", 22300, &["e2r"]);
    let (_sshd, uri) = start_sshd(&env, 22399);
    env.uri = uri;
    // Upload, create, seed, start, readiness and ssh, all through the remote protocol.
    env.import();
    let created = env.run(&["create", "e2r", "1G", "2", "8G", "--project-disk", "1G", "--json"]).ok().json();
    timing("create over qemu+ssh", format!("{} ms", created["create"]["elapsed_ms"]));
    wait_ready(&env, "e2r");
    assert_eq!(env.ssh("e2r", "hostname").trim(), "project-e2r");
    let list = env.run(&["list", "--json"]).ok().json();
    assert_eq!(list[0]["state"], "running");
    env.run(&["destroy", "e2r"]).ok();
    assert_eq!(env.vm_volumes(), Vec::<String>::new());
}

#[test]
#[ignore = "boots guests; needs root, libvirtd and PROJECT_VM_TEST_IMAGE; run by scripts/test.sh"]
fn apply_converges_idempotently_grows_and_prunes() {
    let env = Guest::new("apply", 22350, &["ap-a", "ap-b"]);
    env.import();
    let file = env.dir.join("vms.json");
    let write = |a_memory: &str, a_data: &str, with_b: bool| {
        let mut vms = serde_json::json!({ "ap-a": { "memory": a_memory, "project_disk": a_data, "autostart": true } });
        if with_b {
            vms["ap-b"] = serde_json::json!({ "depends_on": ["ap-a"] });
        }
        let doc = serde_json::json!({
            "defaults": { "memory": "1G", "cpus": 2, "disk": "8G", "project_disk": "1G" },
            "vms": vms,
        });
        std::fs::write(&file, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    };
    let f = file.to_str().unwrap();
    let uuids = || -> Vec<String> {
        ["project-ap-a", "project-ap-b"]
            .iter()
            .map(|d| String::from_utf8(virsh(&["domuuid", d]).stdout).unwrap().trim().to_owned())
            .collect()
    };
    let xml = |d: &str| String::from_utf8(virsh(&["dumpxml", "--inactive", d]).stdout).unwrap();

    // Two VMs, b depending on a: a is created (and started, autostart) first.
    write("1G", "1G", true);
    let r = env.run(&["apply", "-f", f, "--wait", "--json"]).ok().json();
    assert_eq!(r["changes"], 2, "{r}");
    assert_eq!(r["results"][0]["name"], "ap-a", "dependency first: {r}");
    assert_eq!(r["results"][0]["done"], serde_json::json!(["created", "started", "ready"]));
    assert_eq!(r["results"][1]["done"], serde_json::json!(["created"]));
    timing("apply (2 VMs, one booted)", format!("{:.1} s", r["results"][0]["seconds"].as_f64().unwrap()));

    // Again: 0 changes, same uuids, same definitions, nothing restarted.
    let (before_uuids, before_xml) = (uuids(), xml("project-ap-a"));
    let boot_id = env.ssh("ap-a", "cat /proc/sys/kernel/random/boot_id");
    let r = env.run(&["apply", "-f", f, "--json"]).ok().json();
    assert_eq!(r["changes"], 0, "{r}");
    assert_eq!(uuids(), before_uuids);
    assert_eq!(xml("project-ap-a"), before_xml);
    assert_eq!(env.ssh("ap-a", "cat /proc/sys/kernel/random/boot_id"), boot_id, "restarted by a no-op apply");

    // More memory and a bigger project disk, with data on it.
    env.ssh("ap-a", "echo kept > /project/data.txt && sync");
    let mem_before: u64 = env.ssh("ap-a", "awk '/MemTotal/ {print $2}' /proc/meminfo").trim().parse().unwrap();
    write("1536M", "2G", true);
    let p = env.run(&["plan", "-f", f, "--json"]).ok().json();
    let a = &p["vms"][0];
    let classes: Vec<(String, String)> = a["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["field"].as_str().unwrap().into(), c["class"].as_str().unwrap().into()))
        .collect();
    assert_eq!(classes, vec![("memory".into(), "next-restart".into()), ("project_disk".into(), "now".into())], "{p}");
    let r = env.run(&["apply", "-f", f, "--restart", "--wait", "--json"]).ok().json();
    assert_eq!(r["failed"], 0, "{r}");
    let mem_after: u64 = env.ssh("ap-a", "awk '/MemTotal/ {print $2}' /proc/meminfo").trim().parse().unwrap();
    assert!(mem_after > mem_before + 400_000, "MemTotal {mem_before} kB -> {mem_after} kB");
    assert_eq!(env.ssh("ap-a", "cat /project/data.txt").trim(), "kept");
    let size = gib(&env.ssh("ap-a", "df -B1 --output=size /project | tail -1"));
    assert!((1.8..=2.0).contains(&size), "/project is {size:.2} GiB after growing to 2G");
    assert_eq!(env.run(&["apply", "-f", f, "--json"]).ok().json()["changes"], 0);

    // Prune b: destroyed, its project disk kept.
    write("1536M", "2G", false);
    let r = env.run(&["apply", "-f", f, "--prune", "--json"]).ok().json();
    assert_eq!(r["changes"], 1, "{r}");
    assert!(!virsh(&["dominfo", "project-ap-b"]).status.success());
    assert!(env.volumes().contains(&"project-ap-b-data.qcow2".to_string()));
    assert!(!env.volumes().contains(&"project-ap-b-root.qcow2".to_string()));
    let _ = virsh(&["vol-delete", "--pool", &env.pool, "project-ap-b-data.qcow2"]);
}

#[test]
#[ignore = "boots guests; needs root, libvirtd and PROJECT_VM_TEST_IMAGE_TRIXIE; run by scripts/test.sh"]
fn a_trixie_genericcloud_style_image_is_ready_clean_and_survives_a_restart() {
    let env = Guest::with_image("PROJECT_VM_TEST_IMAGE_TRIXIE", "trixie", "trixie", 22450, &["tx", "txd", "txt"]);
    env.import();

    // create --start --wait: exit 0 on cloud-init 25 (it was 5: our own config failed its schema).
    let r = env
        .run(&[
            "create",
            "tx",
            "1G",
            "2",
            "8G",
            "--project-disk",
            "1G",
            "--start",
            "--wait",
            "--timeout",
            "900",
            "--json",
        ])
        .ok()
        .json();
    let ready = &r["ready"];
    assert_eq!((ready["result"].as_str(), ready["cloud_init_status"].as_str()), (Some("done"), Some("done")), "{r}");
    // cloud-init 25 stamps stages in seconds since boot: the latency is seconds, not 1.8e9.
    let latency = ready["report_latency_s"].as_f64().expect("latency figured from the uptime clock");
    assert!((0.0..60.0).contains(&latency), "report latency {latency} s");
    timing(
        "trixie create --start --wait",
        format!("{:.1} s (latency {latency:.2} s)", ready["waited_s"].as_f64().unwrap()),
    );

    let version = env.ssh("tx", "cloud-init --version 2>&1");
    assert!(version.contains(" 25."), "not the cloud-init this test is for: {version}");
    assert_schema_clean(&env, "tx");
    assert_eq!(env.ssh("tx", "hostname").trim(), "project-tx");
    let mnt = env.ssh("tx", "findmnt -no FSTYPE,LABEL /project");
    assert_eq!(mnt.split_whitespace().collect::<Vec<_>>(), vec!["ext4", "project"], "{mnt}");
    // Networking came from our network-config through netplan and networkd.
    let netplan = env.ssh("tx", "sudo cat /etc/netplan/50-cloud-init.yaml");
    assert!(netplan.contains("macaddress"), "{netplan}");
    env.ssh("tx", "echo kept > /project/x && sync");

    // What status says the guest reaches on the host is what libvirt handed
    // passt: without --no-map-gw, passt maps the gateway to the host's loopback.
    let status = env.run(&["status", "tx", "--json"]).ok().json();
    let ours = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|p| std::fs::read(p.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .find(|c| c.contains("passt") && c.contains("--socket") && c.contains("-project-tx-net0"))
        .expect("the passt process of tx");
    assert_eq!(
        status["host_reach"]["host_loopback"].as_bool(),
        Some(!ours.contains("--no-map-gw")),
        "{ours} vs {status}"
    );

    // Graceful stop without a guest agent, then a second ready boot with the
    // seed gone: cloud-init's packaged ds-identify finds no datasource, and
    // the instance's manual-clean marker keeps it running from the cache.
    graceful_stop(&env, "tx");
    assert!(!env.volumes().contains(&"project-tx-seed.iso".to_string()));
    later_boot(&env, "tx", "ran");
    // ssh verifies the host key pinned at create: per-instance modules did not run again.
    assert_eq!(env.ssh("tx", "cat /project/x").trim(), "kept");
    assert_eq!(env.ssh("tx", "test -e /var/lib/cloud/instance/manual-clean && echo marked").trim(), "marked");

    // A template of it: the sealing boot has no seed (cloud-init disabled on
    // it) and still reports; a VM made from it is provisioned as a new machine.
    let r = env.run(&["image", "save", "tx", "txtmpl", "--stop", "--json"]);
    assert_eq!(r.code, 0, "image save on trixie: stdout {} stderr {}", r.stdout, r.stderr);
    let r = env.run(&[
        "create",
        "txt",
        "1G",
        "2",
        "8G",
        "--project-disk",
        "1G",
        "--image",
        "txtmpl",
        "--start",
        "--wait",
        "--timeout",
        "900",
        "--json",
    ]);
    assert_eq!(r.code, 0, "a VM from the trixie template: stdout {} stderr {}", r.stdout, r.stderr);
    let ready = r.json()["ready"].clone();
    assert_eq!((ready["boot"].as_str(), ready["cloud_init"].as_str()), (Some("first"), Some("ran")), "{ready}");
    assert_eq!(env.ssh("txt", "hostname").trim(), "project-txt");
    env.run(&["destroy", "txt"]).ok();
    env.run(&["image", "rm", "txtmpl"]).ok();

    // A fourth boot with cloud-init disabled in the guest: reported at once.
    // (`image save --stop` started tx again: its third boot.)
    env.run(&["start", "tx", "--wait", "--timeout", "240"]).ok();
    env.ssh("tx", "sudo touch /etc/cloud/cloud-init.disabled");
    graceful_stop(&env, "tx");
    later_boot(&env, "tx", "disabled");
    assert_eq!(env.ssh("tx", "cat /project/x").trim(), "kept");
    env.run(&["destroy", "tx"]).ok();

    // A degraded run caused by the user's own cloud-config is still exit 5, with the warning shown.
    let bad = env.dir.join("bad.yaml");
    std::fs::write(&bad, "#cloud-config\nmanual_cache_clean: true\n").unwrap();
    let r = env.run(&[
        "create",
        "txd",
        "1G",
        "2",
        "8G",
        "--project-disk",
        "1G",
        "--user-data",
        bad.to_str().unwrap(),
        "--start",
        "--wait",
        "--timeout",
        "900",
    ]);
    assert_eq!(r.code, 5, "stdout {} stderr {}", r.stdout, r.stderr);
    assert!(r.stderr.contains("degraded") && r.stderr.contains("manual_cache_clean"), "{}", r.stderr);
    env.run(&["destroy", "txd"]).ok();
    assert_eq!(env.vm_volumes(), Vec::<String>::new());
}

#[test]
#[ignore = "boots guests; needs root, libvirtd and PROJECT_VM_TEST_IMAGE; run by scripts/test.sh"]
fn snapshots_roll_a_vm_back_running_and_stopped() {
    let env = Guest::new("snap", 22470, &["sn"]);
    env.import();
    env.run(&["create", "sn", "1G", "2", "8G", "--project-disk", "1G"]).ok();
    wait_ready(&env, "sn");

    // Running: the snapshot holds memory too; a revert leaves the VM running.
    env.ssh("sn", "echo one > ~/file && echo data > /project/file && sync");
    let s = env.run(&["snapshot", "create", "sn", "live", "--description", "before rm", "--json"]).ok().json();
    assert_eq!((s["memory"].as_bool(), s["state"].as_str()), (Some(true), Some("running")), "{s}");
    assert_eq!(s["disks"], serde_json::json!(["vda", "vdb"]));
    env.ssh("sn", "rm ~/file /project/file && sync");
    let r = env.run(&["snapshot", "revert", "sn", "live", "--json"]).ok().json();
    assert_eq!((r["state"].as_str(), r["stopped"].as_bool()), (Some("running"), Some(false)), "{r}");
    let back = env.ssh_once_answering("sn", "cat ~/file /project/file", std::time::Duration::from_secs(300));
    assert_eq!(back.split_whitespace().collect::<Vec<_>>(), vec!["one", "data"]);

    // Stopped: disks only; the revert leaves it stopped.
    env.run(&["stop", "sn", "--timeout", "120"]).ok();
    let s = env.run(&["snapshot", "create", "sn", "--json"]).ok().json();
    assert_eq!((s["name"].as_str(), s["memory"].as_bool()), (Some("snap-1"), Some(false)), "{s}");
    wait_ready(&env, "sn");
    env.ssh("sn", "rm ~/file && sync");
    env.run(&["stop", "sn", "--timeout", "120"]).ok();
    let r = env.run(&["snapshot", "revert", "sn", "snap-1", "--json"]).ok().json();
    assert_eq!(r["state"], "shutoff", "{r}");
    wait_ready(&env, "sn");
    assert_eq!(env.ssh("sn", "cat ~/file").trim(), "one");

    let list = env.run(&["snapshot", "list", "sn", "--json"]).ok().json();
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["live", "snap-1"]);
    env.run(&["snapshot", "delete", "sn", "live"]).ok();
    assert_eq!(env.run(&["snapshot", "list", "sn", "--json"]).ok().json().as_array().unwrap().len(), 1);

    // destroy takes the snapshots with it: no metadata left behind.
    env.run(&["destroy", "sn"]).ok();
    assert!(!std::path::Path::new("/var/lib/libvirt/qemu/snapshot/project-sn")
        .read_dir()
        .is_ok_and(|mut d| d.next().is_some()));
    assert_eq!(env.vm_volumes(), Vec::<String>::new());
}

#[test]
#[ignore = "boots guests; needs root, libvirtd and PROJECT_VM_TEST_IMAGE; run by scripts/test.sh"]
fn a_saved_template_makes_new_machines() {
    let env = Guest::new("tmpl", 22480, &["ta", "tb"]);
    env.import();
    env.run(&["create", "ta", "1G", "2", "8G", "--project-disk", "1G"]).ok();
    wait_ready(&env, "ta");
    env.ssh("ta", "echo prepared | sudo tee /opt/marker >/dev/null && echo 'secret command' > ~/.bash_history && sync");
    let a_machine = env.ssh("ta", "cat /etc/machine-id");
    let a_key = env.ssh("ta", "sudo -n cat /etc/ssh/ssh_host_ed25519_key.pub");

    // Running: refused without --stop; with it, stopped for the copy and started again.
    assert_eq!(env.run(&["image", "save", "ta", "tmpl"]).code, 2);
    let r = env.run(&["image", "save", "ta", "tmpl", "--stop", "--json"]).ok().json();
    assert_eq!((r["parent"].as_str(), r["restarted"].as_bool()), (Some("debian"), Some(true)), "{r}");
    timing("image save (copy, seal boot, checksum)", format!("{} ms", r["elapsed_ms"]));
    let list = env.run(&["image", "list", "--json"]).ok().json();
    let t = list.as_array().unwrap().iter().find(|e| e["name"] == "tmpl").expect("listed");
    assert_eq!((t["source"].as_str(), t["parent"].as_str()), (Some("vm:ta"), Some("debian")), "{t}");
    // The copy is standalone: no backing file.
    let vol =
        String::from_utf8(virsh(&["vol-dumpxml", "--pool", &env.pool, t["volume"].as_str().unwrap()]).stdout).unwrap();
    assert!(!vol.contains("<backingStore>"), "{vol}");

    // A VM from the template is a new machine with the template's contents.
    env.run(&["create", "tb", "1G", "2", "8G", "--project-disk", "1G", "--image", "tmpl"]).ok();
    wait_ready(&env, "tb");
    assert_eq!(env.ssh("tb", "cat /opt/marker").trim(), "prepared");
    assert_eq!(env.ssh("tb", "hostname").trim(), "project-tb");
    let b_machine = env.ssh("tb", "cat /etc/machine-id");
    assert!(!b_machine.trim().is_empty() && b_machine != a_machine, "machine-id {b_machine} (a: {a_machine})");
    // ssh verified tb against its own pinned key; it is not ta's.
    assert_ne!(env.ssh("tb", "sudo -n cat /etc/ssh/ssh_host_ed25519_key.pub"), a_key);
    let iid = env.ssh("tb", "cat /var/lib/cloud/data/instance-id");
    let b_uuid = String::from_utf8(virsh(&["domuuid", "project-tb"]).stdout).unwrap();
    assert!(iid.contains(b_uuid.trim()), "cloud-init instance {iid} is not tb's ({b_uuid})");
    assert_eq!(env.ssh("tb", "test -e ~/.bash_history && echo kept || echo gone").trim(), "gone");
    assert_eq!(env.ssh("tb", "wc -l < ~/.ssh/authorized_keys").trim(), "1");
    // ta itself was left as it was.
    wait_ready(&env, "ta");
    assert_eq!(env.ssh("ta", "cat /etc/machine-id"), a_machine);

    env.run(&["destroy", "tb"]).ok();
    env.run(&["destroy", "ta"]).ok();
    env.run(&["image", "rm", "tmpl"]).ok();
    assert_eq!(env.vm_volumes(), Vec::<String>::new());
}

#[test]
#[ignore = "boots guests; needs root, libvirtd, virtiofsd and PROJECT_VM_TEST_IMAGE; run by scripts/test.sh"]
fn shared_folders_reach_the_guest_both_ways_and_read_only_ones_refuse_writes() {
    let env = Guest::new("share", 22490, &["sh"]);
    env.import();
    let (rw, ro) = (env.dir.join("share-rw"), env.dir.join("share-ro"));
    for d in [&rw, &ro] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("from-host"), "written on the host\n").unwrap();
    }
    // A missing source is refused before anything is made.
    let missing = format!("{}:/mnt/x", env.dir.join("nope").display());
    let r = env.run(&["create", "sh", "1G", "2", "8G", "--share", &missing]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(env.vm_volumes().is_empty());

    let share_rw = format!("{}:/mnt/rw", rw.display());
    let share_ro = format!("{}:/mnt/ro:ro", ro.display());
    env.run(&["create", "sh", "1G", "2", "8G", "--project-disk", "1G", "--share", &share_rw, "--share", &share_ro])
        .ok();
    wait_ready(&env, "sh");
    assert_eq!(env.ssh("sh", "cat /mnt/rw/from-host").trim(), "written on the host");
    env.ssh("sh", "echo written in the guest | sudo tee /mnt/rw/from-guest >/dev/null && sync");
    assert_eq!(std::fs::read_to_string(rw.join("from-guest")).unwrap().trim(), "written in the guest");
    assert_eq!(env.ssh("sh", "cat /mnt/ro/from-host").trim(), "written on the host");
    let refused = env.ssh("sh", "sudo touch /mnt/ro/nope 2>&1 && echo wrote || echo refused");
    assert!(refused.contains("refused") && refused.contains("Read-only"), "{refused}");
    assert!(!ro.join("nope").exists());
    let status = env.run(&["status", "sh"]).ok().stdout;
    assert!(status.contains("/mnt/ro (read-only)"), "{status}");
    env.run(&["destroy", "sh"]).ok();
    assert!(rw.join("from-guest").exists(), "destroy touched a shared directory");
}
