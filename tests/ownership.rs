//! Ownership that can't be fooled, on a real libvirtd: a project-vm record
//! copied into another domain gives that domain no power over the original
//! VM's disks. No guest boots here.

mod common;

use common::*;

#[test]
#[ignore = "needs root and libvirtd on qemu:///system; run by scripts/test.sh"]
fn a_copied_domain_cannot_destroy_the_original_disks() {
    let (env, mut c) = tiny_host("own", 22460, &["orig"]);
    c.domain("project-cpy");
    env.run(&["create", "orig", "1G", "1", "5G", "--project-disk", "1G"]).ok();
    let before = env.vm_volumes();

    // virsh dumpxml project-orig, renamed, without uuid and mac, defined again.
    let xml = String::from_utf8(virsh(&["dumpxml", "--inactive", "project-orig"]).stdout).unwrap();
    let copy: String = xml
        .lines()
        .filter(|l| !l.contains("<uuid>") && !l.contains("<mac "))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("<name>project-orig</name>", "<name>project-cpy</name>");
    let file = env.dir.join("copy.xml");
    std::fs::write(&file, copy).unwrap();
    let d = virsh(&["define", file.to_str().unwrap()]);
    assert!(d.status.success(), "{}", String::from_utf8_lossy(&d.stderr));

    for args in [vec!["destroy", "cpy"], vec!["start", "cpy"], vec!["status", "cpy"]] {
        let r = env.run(&args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains("not its own"), "{}", r.stderr);
    }
    assert_eq!(env.vm_volumes(), before, "the copy reached the original's disks");
    let list = env.run(&["list", "--json"]).ok().json();
    let names: Vec<&str> = list.as_array().unwrap().iter().filter_map(|v| v["name"].as_str()).collect();
    assert!(names.contains(&"orig") && !names.contains(&"cpy"), "{names:?}");
    assert!(virsh(&["dominfo", "project-cpy"]).status.success(), "the copy itself is not ours to remove either");

    // The copy still uses every disk: destroying the original keeps them
    // (a volume another domain uses is never deleted); once the copy is
    // gone, nothing is left to a later destroy, and gc leaves them alone.
    env.run(&["destroy", "orig"]).ok();
    assert!(!virsh(&["dominfo", "project-orig"]).status.success());
    assert_eq!(env.vm_volumes(), before, "destroy deleted disks the copy uses");
    assert!(virsh(&["undefine", "project-cpy"]).status.success());
}
