//! A test driver connection of a test's own, with host settings that need
//! no files: the fast tests of logic (`tests/driver.rs`, `tests/day2.rs`).

use project_vm::libvirt;
use project_vm::ops::create::CreateRequest;
use project_vm::ops::Ctx;
use project_vm::settings::{Accel, HostSettings, Network};
use project_vm::spec::{Resources, Size, VmName};

/// A `Ctx` on a test driver of its own (a node file per call).
pub fn driver_ctx() -> Ctx {
    let settings = HostSettings {
        storage_dir: Some("/project-vm-test".into()),
        pool: Some("pv".into()),
        base_image: Some("base.qcow2".into()),
        accel: Some(Accel::Tcg),
        network: Some(Network::User { ssh_port: 22022 }),
        ssh_authorized_keys: Some(vec![
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOrUuPHcX0EBHf+EB9Nl7gklkDq2TbK6HXAbiUZmjLCk test".into(),
        ]),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    // A node file of our own: test:///default is one state shared by every
    // connection in the process, and tests run on parallel threads.
    let dir = tempfile::tempdir().unwrap().keep();
    let node = dir.join("node.xml");
    std::fs::write(&node, "<node><cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads><active>2</active><mhz>2000</mhz></cpu><memory>8388608</memory></node>").unwrap();
    let uri = format!("test://{}", node.display());
    let conn = libvirt::connect(&uri).unwrap();
    Ctx::new(conn, uri, settings, true)
}

/// A 1G, 1-CPU request for VM `n`, nothing else asked.
pub fn request(n: &str) -> CreateRequest {
    CreateRequest {
        name: VmName::parse(n).unwrap(),
        resources: Resources { memory: Size(1 << 30), cpus: 1, disk: Size(5 << 30), project_disk: Size(2 << 30) },
        image: None,
        user_data: None,
        features: vec![],
        autostart: false,
        devices: Default::default(),
        stage_snapshots: false,
        provision: Default::default(),
    }
}
