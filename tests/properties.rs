//! Properties over arbitrary valid specs: the domain XML project-vm renders
//! passes libvirt's own schema (`virt-xml-validate`), and the seed parses back
//! to the values it was made from. Needs libvirt's client tools (libvirt-clients).

use std::process::Command;

use proptest::prelude::*;

use project_vm::cloudinit::{self, SeedInput};
use project_vm::libvirt::domain_xml;
use project_vm::libvirt::metadata::{Ownership, Phase};
use project_vm::spec::{
    Accel, Firmware, Network, PciAddress, Port, Protocol, Resources, Share, Size, StaticNetwork, VmName, VmSpec,
};

fn network() -> impl Strategy<Value = (Network, Option<u16>)> {
    prop_oneof![
        "[a-zA-Z0-9_-]{1,20}".prop_map(|name| (Network::Network { name }, None)),
        "[a-z][a-z0-9]{0,14}".prop_map(|name| (Network::Bridge { name }, None)),
        (1024u16..=65000, 0u16..500)
            .prop_map(|(base, off)| (Network::User { ssh_port: base }, Some(base.saturating_add(off)))),
    ]
}

prop_compose! {
    fn spec()(
        name in "[a-z][a-z0-9-]{0,47}",
        memory_mib in 128u64..=(16 << 20),
        cpus in 1u32..=512,
        disk_gib in 1u64..=(64 << 10),
        data_gib in 1u64..=(64 << 10),
        tcg in any::<bool>(),
        (network, ssh_port) in network(),
        user in "[a-z_][a-z0-9_-]{0,31}",
        tailnet in proptest::option::of("[a-z]{1,10}\\.ts\\.net"),
        autostart in any::<bool>(),
        features in proptest::sample::subsequence(vec!["base", "devtools", "docker", "nix"], 0..=4),
        efi in any::<bool>(),
        hostdevs in proptest::collection::vec((0u16..4, any::<u8>(), 0u8..32, 0u8..8), 0..3),
        static_net in proptest::option::of((1u8..=254, 8u8..=30)),
        shares in proptest::collection::vec(("[a-z]{1,12}", any::<bool>()), 0..3),
        ports in proptest::collection::btree_map(1024u16..=65535, (1u16..=65535, any::<bool>(), any::<bool>()), 0..4),
    ) -> VmSpec {
        VmSpec {
            name: VmName::parse(&name).unwrap(),
            resources: Resources {
                memory: Size(memory_mib << 20),
                cpus,
                disk: Size(disk_gib << 30),
                project_disk: Size(data_gib << 30),
            },
            base_image: "debian-13".into(),
            accel: if tcg { Accel::Tcg } else { Accel::Kvm },
            network,
            ssh_user: user,
            ssh_port,
            tailnet,
            autostart,
            features: features.into_iter().map(String::from).collect(),
            firmware: if efi || !hostdevs.is_empty() { Firmware::Efi } else { Firmware::Bios },
            network_config: static_net.map(|(host, prefix)| StaticNetwork {
                address: format!("10.{host}.0.{host}/{prefix}").parse().unwrap(),
                gateway: None,
                dns: vec!["10.0.0.1".parse().unwrap()],
            }),
            hostdevs: hostdevs
                .into_iter()
                .map(|(domain, bus, slot, function)| PciAddress { domain, bus, slot, function })
                .collect(),
            ports: ports
                .into_iter()
                .map(|(host, (guest, udp, v6))| Port {
                    host,
                    guest,
                    address: if v6 { "::1".parse().unwrap() } else { "127.0.0.1".parse().unwrap() },
                    protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
                })
                .collect(),
            shares: shares
                .into_iter()
                .enumerate()
                .map(|(i, (dir, ro))| Share { source: format!("/srv/{dir}").into(), target: format!("/mnt/{dir}{i}").into(), readonly: ro })
                .collect(),
            cloud_init_hash: String::new(),
            stage_snapshots: false,
            checks: vec![],
            application_script: false,
        }
    }
}

fn ownership(spec: &VmSpec, pool: &str, seed: bool, uuid: &str) -> Ownership {
    Ownership {
        xmlns: None,
        version: 1,
        name: spec.name.to_string(),
        uuid: Some(uuid.to_owned()),
        phase: Phase::Ready,
        pool: pool.to_owned(),
        root_volume: spec.name.root_volume(),
        data_volume: spec.name.data_volume(),
        data_kept: false,
        seed_volume: seed.then(|| spec.name.seed_volume()),
        created: 1,
        host_key: Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGbNlmZ4sGeLhPylGd4cGMMThc3OHc3ULrMhtkdPRXw6 k".into()),
        spec_json: serde_json::to_string(spec).unwrap(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    #[ignore = "needs virt-xml-validate (libvirt-clients); run by scripts/test.sh"]
    fn domain_xml_passes_libvirts_schema(
        s in spec(),
        pool in "[A-Za-z0-9_.-]{1,30}",
        seed in any::<bool>(),
        serial_log in any::<bool>(),
        purpose in 0u8..3,
    ) {
        let uuid = uuid::Uuid::new_v4().to_string();
        let own = ownership(&s, &pool, seed, &uuid);
        let log = serial_log.then(|| format!("/var/log/libvirt/qemu/{}-serial.log", s.name.domain()));
        let files = domain_xml::HostFiles { serial_log: log, virtiofsd: Some("/usr/libexec/virtiofsd".into()) };
        // Every definition the builder makes: the VM's, a redefinition, a sealing boot.
        let purpose = match purpose {
            0 => domain_xml::Purpose::Vm,
            1 => domain_xml::Purpose::Redefine { uuid: uuid::Uuid::new_v4().to_string() },
            _ => domain_xml::Purpose::Seal,
        };
        let xml = domain_xml::build_for(&s, &own, &files, &purpose).to_xml();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("domain.xml");
        std::fs::write(&file, &xml).unwrap();
        let out = Command::new("virt-xml-validate").arg(&file).arg("domain").output().expect("virt-xml-validate");
        prop_assert!(out.status.success(), "{}\n{}\n{xml}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        // And our record reads back from it unchanged.
        let start = xml.find("<projectvm:vm ").unwrap();
        let end = xml.find("</projectvm:vm>").map(|e| e + "</projectvm:vm>".len()).unwrap();
        let back = Ownership::parse(&xml[start..end]).unwrap();
        prop_assert_eq!(Ownership { xmlns: None, ..back }, own);
    }

    #[test]
    fn seeds_parse_back_to_their_values(s in spec(), keys in proptest::collection::vec("ssh-ed25519 [A-Za-z0-9+/]{20,68} [a-z@.-]{1,20}", 1..4)) {
        let seed = cloudinit::render(&SeedInput {
            spec: &s,
            authorized_keys: &keys,
            host_key: None,
            user_data: None,
            instance_id: "iid-prop",
            tailscale_auth_key: None,
        });
        prop_assert!(seed.user_data.starts_with("#cloud-config\n"));
        let ud: serde_json::Value = serde_yaml_ng::from_str(&seed.user_data).unwrap();
        prop_assert_eq!(&ud["hostname"], &serde_json::json!(s.name.domain()));
        prop_assert_eq!(&ud["users"][0]["name"], &serde_json::json!(s.ssh_user));
        prop_assert_eq!(&ud["users"][0]["ssh_authorized_keys"], &serde_json::json!(keys));
        prop_assert!(ud.get("manual_cache_clean").is_none());
        let md: serde_json::Value = serde_yaml_ng::from_str(&seed.meta_data).unwrap();
        prop_assert_eq!(&md["local-hostname"], &serde_json::json!(s.name.domain()));
        prop_assert_eq!(&md["instance-id"], &serde_json::json!("iid-prop"));
        let nc: serde_json::Value = serde_yaml_ng::from_str(&seed.network_config).unwrap();
        prop_assert_eq!(&nc["ethernets"]["primary"]["match"]["macaddress"], &serde_json::json!(s.name.mac()));
        match &s.network_config {
            Some(n) => prop_assert_eq!(&nc["ethernets"]["primary"]["addresses"][0], &serde_json::json!(n.address.to_string())),
            None => prop_assert_eq!(&nc["ethernets"]["primary"]["dhcp4"], &serde_json::json!(true)),
        }
        // The whole ISO reads back too (volume id and the three files).
        let iso = cloudinit::iso::build(&seed).unwrap();
        prop_assert!(iso.len() % 2048 == 0 && iso.windows(6).any(|w| w == b"cidata"));
    }
}
