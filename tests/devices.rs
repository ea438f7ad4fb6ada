//! Firmware and devices on a real libvirtd: UEFI with its own NVRAM, PCI
//! passthrough checked against the host's node devices (never started), and
//! static addresses. No guest OS boots here (the UEFI VM only starts).

mod common;

use common::*;
use serde_json::json;

fn validate_domain(env: &Env, domain: &str) -> String {
    let xml = String::from_utf8(virsh(&["dumpxml", "--inactive", domain]).stdout).unwrap();
    let file = env.dir.join(format!("{domain}.xml"));
    std::fs::write(&file, &xml).unwrap();
    sh(&format!("virt-xml-validate {} domain", file.display()));
    xml
}

#[test]
#[ignore = "needs root and libvirtd on qemu:///system with OVMF (scripts/setup-host.sh); run by scripts/test.sh"]
fn an_efi_vm_starts_and_destroy_removes_its_nvram() {
    let (env, _c) = tiny_host("efi", 22740, &["ue"]);
    env.run(&["create", "ue", "1G", "1", "5G", "--project-disk", "1G", "--firmware", "efi"]).ok();
    let xml = validate_domain(&env, "project-ue");
    assert!(xml.contains("firmware='efi'"), "{xml}");
    env.run(&["start", "ue"]).ok();
    let live = String::from_utf8(virsh(&["dumpxml", "project-ue"]).stdout).unwrap();
    let nvram = live
        .lines()
        .find_map(|l| {
            l.trim().strip_prefix("<nvram").and_then(|r| r.split('>').nth(1)).and_then(|r| r.split('<').next())
        })
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no NVRAM in {live}"));
    assert!(std::path::Path::new(&nvram).exists(), "{nvram}");
    assert_eq!(String::from_utf8(virsh(&["domstate", "project-ue"]).stdout).unwrap().trim(), "running");
    assert_eq!(env.run(&["status", "ue", "--json"]).ok().json()["firmware"], "efi");
    env.run(&["destroy", "ue"]).ok();
    assert!(!std::path::Path::new(&nvram).exists(), "destroy left {nvram}");
    assert_eq!(env.vm_volumes(), Vec::<String>::new());
}

#[test]
#[ignore = "needs root and libvirtd on qemu:///system; run by scripts/test.sh"]
fn hostdevs_are_checked_against_the_host_and_shown_but_never_started() {
    let (env, _c) = tiny_host("hostdev", 22760, &["hd"]);
    let before = env.volumes();
    let r = env.run(&["create", "hd", "1G", "1", "5G", "--hostdev", "0000:7f:1f.7"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no PCI device 0000:7f:1f.7"), "{}", r.stderr);
    assert_eq!(env.volumes(), before, "a refused create made something");
    assert_eq!(env.run(&["create", "hd", "--hostdev", "01:00"]).code, 2);

    // A device this machine has (the VM is never started: that would take it from the host).
    let list = String::from_utf8(virsh(&["nodedev-list", "--cap", "pci"]).stdout).unwrap();
    let node = list.lines().next().expect("the host has PCI devices").trim().to_owned();
    let parts: Vec<&str> = node.trim_start_matches("pci_").split('_').collect();
    let addr = format!("{}:{}:{}.{}", parts[0], parts[1], parts[2], parts[3]);
    let r = env.run(&["create", "hd", "1G", "1", "5G", "--hostdev", &addr, "--hostdev", &addr]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("is given twice"), "{}", r.stderr);
    assert_eq!(env.volumes(), before, "a refused create made something");
    env.run(&["create", "hd", "1G", "1", "5G", "--project-disk", "1G", "--hostdev", &addr]).ok();
    let xml = validate_domain(&env, "project-hd");
    assert!(
        xml.contains("<hostdev mode='subsystem' type='pci' managed='yes'>") && xml.contains("firmware='efi'"),
        "{xml}"
    );
    let s = env.run(&["status", "hd", "--json"]).ok().json();
    let dev = &s["hostdevs"][0];
    assert_eq!(dev["address"], addr.as_str());
    let vendor = sh(&format!(
        "virsh -c qemu:///system nodedev-dumpxml {node} | sed -n \"s/.*<vendor id='\\([^']*\\)'.*/\\1/p\""
    ));
    assert_eq!(dev["vendor_id"], vendor.trim(), "{s}");
    assert!(env.run(&["status", "hd"]).ok().stdout.contains(&format!("hostdev:   {addr}")));
    env.run(&["destroy", "hd"]).ok();
}

#[test]
#[ignore = "needs root and libvirtd on qemu:///system; run by scripts/test.sh"]
fn static_addresses_are_validated_seeded_and_first_boot_only() {
    let (env, _c) = tiny_host("static", 22780, &["st"]);
    let r = env.run(&["create", "st", "1G", "1", "5G", "--ip", "10.9.0.5/24", "--gateway", "10.8.0.1"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("outside the VM's network"), "{}", r.stderr);
    let r = env.run(&["create", "st", "1G", "1", "5G", "--ip", "10.9.0.0/24"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(env.vm_volumes().is_empty());

    let args = [
        "create",
        "st",
        "1G",
        "1",
        "5G",
        "--project-disk",
        "1G",
        "--ip",
        "10.9.0.5/24",
        "--gateway",
        "10.9.0.1",
        "--dns",
        "10.9.0.1",
    ];
    env.run(&args).ok();
    let s = env.run(&["status", "st", "--json"]).ok().json();
    assert_eq!(
        s["network_config"],
        json!({"address": "10.9.0.5/24", "gateway": "10.9.0.1", "dns": ["10.9.0.1"]}),
        "{s}"
    );
    // The seed carries it as network-config v2, matched by MAC.
    let iso = env.dir.join("seed.iso");
    assert!(virsh(&["vol-download", "--pool", &env.pool, "project-st-seed.iso", iso.to_str().unwrap()])
        .status
        .success());
    let out = env.dir.join("seed");
    sh(&format!("xorriso -osirrox on -indev {} -extract / {} 2>/dev/null", iso.display(), out.display()));
    let nc: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(out.join("network-config")).unwrap()).unwrap();
    let nic = &nc["ethernets"]["primary"];
    assert_eq!((nic["addresses"][0].as_str(), nic["dhcp4"].as_bool()), (Some("10.9.0.5/24"), Some(false)), "{nc}");
    assert_eq!(nic["routes"][0], json!({"to": "0.0.0.0/0", "via": "10.9.0.1"}));

    // A change to it is reported as first-boot only, never silently dropped.
    let file = env.dir.join("vms.json");
    std::fs::write(
        &file,
        json!({"vms": {"st": {"memory": "1G", "cpus": 1, "disk": "5G", "project_disk": "1G",
            "network_config": {"address": "10.9.0.6/24", "gateway": "10.9.0.1", "dns": ["10.9.0.1"]}}}})
        .to_string(),
    )
    .unwrap();
    let p = env.run(&["plan", "-f", file.to_str().unwrap(), "--json"]).ok().json();
    let change = p["vms"][0]["changes"].as_array().unwrap().iter().find(|c| c["field"] == "network_config").cloned();
    assert_eq!(change.expect("network_config change")["class"], "not-applied", "{p}");
    env.run(&["destroy", "st"]).ok();
}
