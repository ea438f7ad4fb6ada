//! The feature library: finding features in directories, precedence,
//! parsing, folding a directory's script and files in, merging, and every
//! refusal by its variant; `feature list --json` and `feature show` through
//! the binary; an unknown or broken feature refused by `create` and `plan`
//! before anything is made (libvirt's test driver, no daemon).

use std::path::{Path, PathBuf};
use std::process::Command;

use project_vm::config::ConfigError;
use project_vm::features::{self, load, Library, Origin};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_project-vm");

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/features")
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// The error of feature `name` in a library of `dir` alone.
fn refusal(dir: &Path, name: &str) -> ConfigError {
    Library::load(&[dir.to_owned()]).get(name).unwrap_err()
}

#[test]
fn a_directory_feature_folds_in_its_files_then_its_script_after_its_runcmd() {
    let lib = Library::load(&[fixture()]);
    let hello = lib.get("hello").unwrap();
    assert_eq!(hello.origin, Origin::Path(fixture().join("hello")));
    assert_eq!(hello.description, "A test feature: a package-free snippet, a script and one file");
    assert!(hello.script && hello.files == 1);
    let files = hello.config["write_files"].as_array().unwrap();
    let greeting = files.iter().find(|f| f["path"] == "/opt/hello/greeting.txt").unwrap();
    assert_eq!(
        (greeting["encoding"].as_str(), greeting["content"].as_str()),
        (Some("b64"), Some("aGVsbG8gZnJvbSBhIGZlYXR1cmUK"))
    );
    assert_eq!(greeting["permissions"], "0644");
    let script = files.iter().find(|f| f["path"] == "/usr/local/libexec/project-vm/features/hello").unwrap();
    assert_eq!(script["permissions"], "0755");
    assert!(script["content"].as_str().unwrap().contains("cp /opt/hello/greeting.txt /var/lib/hello/ok"));
    let runcmd = hello.config["runcmd"].as_array().unwrap();
    assert_eq!(runcmd.len(), 2, "{runcmd:?}");
    assert!(runcmd[0][2].as_str().unwrap().contains("/var/lib/hello/runcmd"), "the snippet's own runcmd first");
    assert_eq!(runcmd[1], serde_json::json!(["/usr/local/libexec/project-vm/features/hello"]), "then the script");
    // Merged after a built-in, in the order asked; the guard passes it.
    let v = lib.cloud_config(&["docker".into(), "hello".into()]).unwrap().unwrap();
    let runcmd = v["runcmd"].as_array().unwrap();
    assert_eq!(runcmd.len(), 4);
    assert_eq!(runcmd[3], serde_json::json!(["/usr/local/libexec/project-vm/features/hello"]));
    assert_eq!(v["packages"], serde_json::json!(["docker.io"]));
}

#[test]
fn the_first_directory_wins_and_a_built_in_name_is_refused() {
    let user = tempfile::tempdir().unwrap();
    let system = tempfile::tempdir().unwrap();
    write(&user.path().join("web.yaml"), "#cloud-config\n# description: mine\npackages: [nginx]\n");
    write(&system.path().join("web.yaml"), "#cloud-config\n# description: the system's\npackages: [apache2]\n");
    write(&system.path().join("db.yaml"), "#cloud-config\npackages: [postgresql]\n");
    write(&user.path().join("docker.yaml"), "#cloud-config\npackages: [podman]\n");
    write(&user.path().join("README.md"), "not a feature");
    write(&user.path().join(".hidden.yaml"), "#cloud-config\n");
    let lib = Library::load(&[user.path().to_owned(), system.path().to_owned()]);
    let web = lib.get("web").unwrap();
    assert_eq!((web.description.as_str(), &web.config["packages"][0]), ("mine", &Value::from("nginx")));
    let entry = lib.entries.iter().find(|e| e.name == "web").unwrap();
    assert_eq!(entry.shadows, vec![system.path().join("web.yaml")]);
    assert_eq!(lib.get("db").unwrap().origin, Origin::Path(system.path().join("db.yaml")));
    match lib.get("docker") {
        Err(ConfigError::FeatureShadowsBuiltIn { name, file }) => {
            assert_eq!((name.as_str(), file), ("docker", user.path().join("docker.yaml").display().to_string()))
        }
        other => panic!("{other:?}"),
    }
    assert!(lib.get("readme").is_err() && lib.get("README").is_err() && lib.get(".hidden").is_err());
    // Both forms of one name in one directory: refused, not guessed.
    write(&user.path().join("twice.yaml"), "#cloud-config\n");
    write(&user.path().join("twice/feature.yaml"), "#cloud-config\n");
    assert!(
        matches!(refusal(user.path(), "twice"), ConfigError::FeatureInvalid { why, .. } if why.contains("both there"))
    );
    // A missing directory holds no features.
    assert_eq!(Library::load(&[user.path().join("nope")]).names(), Library::built_in().names());
}

#[test]
fn bad_yaml_a_guarded_key_and_the_merge_rules_are_refused_naming_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("broken.yaml"), "#cloud-config\npackages: [\n");
    write(&dir.path().join("script.yaml"), "#!/bin/sh\necho hi\n");
    write(&dir.path().join("keys.yaml"), "#cloud-config\nssh_deletekeys: false\n");
    write(&dir.path().join("scalar.yaml"), "#cloud-config\npackages: git\n");
    write(&dir.path().join("own/feature.yaml"), "#cloud-config\n");
    write(&dir.path().join("own/files/x"), "x");
    write(&dir.path().join("own/feature.yaml"), "#cloud-config\n# files: /etc/cloud/cloud.cfg.d\n");
    write(&dir.path().join("own/files/90-project-vm.cfg"), "x");
    let file = |n: &str| dir.path().join(n).display().to_string();
    assert!(
        matches!(refusal(dir.path(), "broken"), ConfigError::FeatureYaml { file: f, why } if f == file("broken.yaml") && why.contains("not valid YAML"))
    );
    assert!(
        matches!(refusal(dir.path(), "script"), ConfigError::FeatureYaml { why, .. } if why.contains("#cloud-config"))
    );
    match refusal(dir.path(), "keys") {
        ConfigError::UnsafeCloudConfig { origin, keys } => {
            assert_eq!(origin, file("keys.yaml"));
            assert!(keys.len() == 1 && keys[0].starts_with("ssh_deletekeys:"), "{keys:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(refusal(dir.path(), "scalar"), ConfigError::FeatureKey { file: f, key, .. } if f == file("scalar.yaml") && key == "packages")
    );
    // A directory's files may not replace project-vm's own in the guest.
    match refusal(dir.path(), "own") {
        ConfigError::UnsafeCloudConfig { keys, .. } => {
            assert!(keys.iter().any(|k| k.starts_with("write_files[")), "{keys:?}")
        }
        other => panic!("{other:?}"),
    }
    // Exit 2, the file named.
    let e: anyhow::Error = refusal(dir.path(), "scalar").into();
    assert_eq!(project_vm::exit::code(&e), 2);
    assert!(e.to_string().starts_with(&format!("{}: packages: must be a list", file("scalar.yaml"))), "{e}");
}

#[test]
fn a_directory_without_feature_yaml_a_large_script_and_too_many_bytes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("empty/script.sh"), "#!/bin/sh\n");
    write(&dir.path().join("big/feature.yaml"), "#cloud-config\n");
    write(&dir.path().join("big/script.sh"), &"#".repeat(load::SCRIPT_MAX as usize + 1));
    write(&dir.path().join("heavy/feature.yaml"), "#cloud-config\n");
    for i in 0..3 {
        write(&dir.path().join(format!("heavy/files/f{i}")), &"x".repeat(load::FILES_MAX as usize / 2));
    }
    write(&dir.path().join("many/feature.yaml"), "#cloud-config\n");
    for i in 0..=load::FILES_COUNT_MAX {
        write(&dir.path().join(format!("many/files/f{i}")), "x");
    }
    write(&dir.path().join("Bad-Name.yaml"), "#cloud-config\n");
    match refusal(dir.path(), "empty") {
        ConfigError::FeatureIncomplete { dir: d, missing } => {
            assert_eq!((d, missing), (dir.path().join("empty").display().to_string(), "feature.yaml"))
        }
        other => panic!("{other:?}"),
    }
    match refusal(dir.path(), "big") {
        ConfigError::FeatureTooLarge { file, what, size, .. } => {
            assert_eq!(
                (file, what, size),
                (dir.path().join("big/script.sh").display().to_string(), "script", load::SCRIPT_MAX + 1)
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(refusal(dir.path(), "heavy"), ConfigError::FeatureTooLarge { what: "files (all together)", .. }));
    assert!(
        matches!(refusal(dir.path(), "many"), ConfigError::FeatureInvalid { why, .. } if why.contains("more than 64 files"))
    );
    assert!(
        matches!(refusal(dir.path(), "Bad-Name"), ConfigError::FeatureInvalid { why, .. } if why.contains("not a feature name"))
    );
}

#[test]
fn requirements_come_first_once_and_must_exist_and_not_circle() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("app.yaml"), "#cloud-config\n# requires: lib, docker\nruncmd: [[echo, app]]\n");
    write(&dir.path().join("lib.yaml"), "#cloud-config\n# requires: docker\nruncmd: [[echo, lib]]\n");
    write(&dir.path().join("orphan.yaml"), "#cloud-config\n# requires: nope\n");
    write(&dir.path().join("a.yaml"), "#cloud-config\n# requires: b\n");
    write(&dir.path().join("b.yaml"), "#cloud-config\n# requires: a\n");
    write(&dir.path().join("map.yaml"), "#cloud-config\nruncmd: {x: 1}\n");
    let lib = Library::load(&[dir.path().to_owned()]);
    let order: Vec<_> = lib.expand(&["app".into()]).unwrap().iter().map(|f| f.name.clone()).collect();
    assert_eq!(order, ["docker", "lib", "app"]);
    assert!(
        matches!(lib.expand(&["orphan".into()]), Err(ConfigError::FeatureKey { key, why, .. }) if key == "# requires" && why.contains("\"nope\""))
    );
    assert!(matches!(lib.expand(&["a".into()]), Err(ConfigError::FeatureKey { why, .. }) if why.contains("circle")));
    assert!(matches!(lib.get("map"), Err(ConfigError::FeatureKey { key, .. }) if key == "runcmd"));
    // A chain of requirements deeper than any library needs is refused, not
    // followed until the stack runs out (it was, at some thousands).
    let deep = tempfile::tempdir().unwrap();
    for i in 0..200 {
        write(&deep.path().join(format!("c{i:03}.yaml")), &format!("#cloud-config\n# requires: c{:03}\n", i + 1));
    }
    write(&deep.path().join("c200.yaml"), "#cloud-config\npackages: [jq]\n");
    let lib = Library::load(&[deep.path().to_owned()]);
    assert!(
        matches!(lib.expand(&["c000".into()]), Err(ConfigError::FeatureKey { why, .. }) if why.contains("deeper than 64")),
        "{:?}",
        lib.expand(&["c000".into()]).err()
    );
    assert_eq!(lib.expand(&["c150".into()]).unwrap().len(), 51, "50 deep is fine");
}

#[test]
fn every_shipped_feature_is_listed_described_and_passes_the_guard() {
    let lib = Library::built_in();
    assert_eq!(lib.names(), ["base", "devtools", "docker", "docker-gpu", "nix", "nvidia"]);
    for name in lib.names() {
        let f = lib.get(&name).unwrap();
        assert!(!f.description.is_empty(), "{name}");
        project_vm::cloudinit::guard(&f.config, &name).unwrap();
    }
    let gpu = lib.cloud_config(&["docker-gpu".into()]).unwrap().unwrap();
    let all = gpu["runcmd"].as_array().unwrap().iter().map(|c| c.to_string()).collect::<Vec<_>>().join("\n");
    assert!(all.contains("nvidia-driver") && all.contains("nvidia-ctk runtime configure --runtime=docker"), "{all}");
    assert!(all.find("nvidia-driver") < all.find("nvidia-ctk"), "the driver before the toolkit");
    assert!(features::valid_name("docker-gpu"));
}

// The binary.

struct World {
    dir: tempfile::TempDir,
    config: PathBuf,
}

/// A settings file whose feature_dirs are `dirs`.
fn world(dirs: &[&Path]) -> World {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let settings = serde_json::json!({
        "feature_dirs": dirs,
        "storage_dir": dir.path().join("pool"),
        "ssh_authorized_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGbNlmZ4sGeLhPylGd4cGMMThc3OHc3ULrMhtkdPRXw6 me@host"],
    });
    std::fs::write(&config, settings.to_string()).unwrap();
    World { dir, config }
}

fn run(w: &World, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(["--connect", "test:///default", "--config"])
        .arg(&w.config)
        .args(args)
        .env_remove("PROJECT_VM_CLOUD_INIT_VALIDATORS")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn feature_list_json_names_every_feature_and_where_it_comes_from() {
    let broken = tempfile::tempdir().unwrap();
    write(&broken.path().join("oops.yaml"), "#cloud-config\nruncmd: nope\n");
    // Each reads well on its own; what they require does not.
    write(&broken.path().join("orphan.yaml"), "#cloud-config\n# requires: nowhere\npackages: [jq]\n");
    write(&broken.path().join("ping.yaml"), "#cloud-config\n# requires: pong\npackages: [jq]\n");
    write(&broken.path().join("pong.yaml"), "#cloud-config\n# requires: ping\npackages: [jq]\n");
    let w = world(&[&fixture(), broken.path()]);
    let (code, out, err) = run(&w, &["--json", "feature", "list"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["dirs"], serde_json::json!([fixture().display().to_string(), broken.path().display().to_string()]));
    let rows = v["features"].as_array().unwrap();
    let row = |n: &str| rows.iter().find(|r| r["name"] == n).unwrap_or_else(|| panic!("{n} in {rows:?}"));
    assert_eq!(row("docker")["origin"], "built-in");
    assert_eq!(row("nvidia")["origin"], "built-in");
    assert_eq!(row("docker-gpu")["requires"], serde_json::json!(["docker", "nvidia"]));
    assert_eq!(row("hello")["origin"], fixture().join("hello").display().to_string());
    assert_eq!((row("hello")["script"].as_bool(), row("hello")["files"].as_u64()), (Some(true), Some(1)));
    assert!(row("hello").get("problem").is_none());
    assert!(row("oops")["problem"].as_str().unwrap().contains("runcmd: must be a list"), "{:?}", row("oops"));
    let problem = |n: &str| row(n)["problem"].as_str().unwrap_or_default().to_owned();
    assert!(problem("orphan").contains("nowhere"), "{:?}", row("orphan"));
    assert!(problem("ping").contains("circle"), "{:?}", row("ping"));
    assert!(problem("pong").contains("circle"), "{:?}", row("pong"));
    assert!(row("docker-gpu").get("problem").is_none(), "what it requires is there");
    // As text: one line each, the problem shown.
    let (code, out, _) = run(&w, &["feature", "list"]);
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with("hello ") && l.contains("A test feature")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("oops ") && l.contains("PROBLEM")), "{out}");
}

#[test]
fn feature_show_prints_the_merged_snippet_and_refuses_a_broken_one() {
    let w = world(&[&fixture()]);
    let (code, out, err) = run(&w, &["feature", "show", "docker-gpu"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("#cloud-config\n# feature docker-gpu (built-in), merged: docker, nvidia, docker-gpu\n"),
        "{out}"
    );
    let v: Value = serde_yaml_ng::from_str(&out).unwrap();
    assert!(v["packages"].as_array().unwrap().contains(&Value::from("docker.io")));
    let (code, out, _) = run(&w, &["--json", "feature", "show", "hello"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["merged"], serde_json::json!(["hello"]));
    let (code, _, err) = run(&w, &["feature", "show", "helo"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown feature \"helo\" (did you mean \"hello\"?)"), "{err}");
}

#[test]
fn create_and_plan_refuse_an_unknown_or_broken_feature_before_anything_is_made() {
    let broken = tempfile::tempdir().unwrap();
    write(&broken.path().join("oops.yaml"), "#cloud-config\nssh_keys: {}\n");
    let w = world(&[&fixture(), broken.path()]);
    for (feature, says) in [("oops", "ssh_keys: not allowed"), ("nope", "unknown feature \"nope\"")] {
        let (code, _, err) = run(&w, &["create", "foo", "1G", "1", "5G", "--project-disk", "1G", "--feature", feature]);
        assert_eq!(code, 2, "{feature}: {err}");
        assert!(err.contains(says), "{feature}: {err}");
        assert!(
            !w.dir.path().join("pool").exists()
                || std::fs::read_dir(w.dir.path().join("pool")).unwrap().next().is_none()
        );
    }
    let file = w.dir.path().join("vms.json");
    std::fs::write(&file, r#"{"vms": {"foo": {"features": ["hello", "oops"]}}}"#).unwrap();
    let (code, _, err) = run(&w, &["plan", "--file", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("vms.foo.features[1]") && err.contains("oops.yaml") && err.contains("ssh_keys"), "{err}");
    assert!(!err.contains("features[0]"), "hello is fine: {err}");
    // The declarative file's own feature_dirs name the features it uses.
    let only = w.dir.path().join("only.json");
    let json = serde_json::json!({ "feature_dirs": [fixture()], "vms": { "foo": { "features": ["hello"] } } });
    std::fs::write(&only, json.to_string()).unwrap();
    let plain = world(&[]);
    let (code, _, err) = run(&plain, &["plan", "--file", only.to_str().unwrap()]);
    assert!(!err.contains("unknown feature"), "{code}: {err}");
}

#[test]
fn a_relative_feature_dir_is_refused() {
    let w = world(&[Path::new("features")]);
    let (code, _, err) = run(&w, &["feature", "list"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("feature_dirs[0]") && err.contains("relative"), "{err}");
}

/// With `PROJECT_VM_CLOUD_INIT_VALIDATORS` set, `plan`/`create` (here: `feature
/// show`, the same check) run cloud-init's own schema check on the user's features.
#[test]
#[ignore = "needs cloud-init validators (scripts/cloud-init-validators.sh); run by scripts/test.sh"]
fn with_validators_a_user_feature_passes_cloud_init_schema_or_is_refused_naming_it() {
    let validators = std::env::var("PROJECT_VM_CLOUD_INIT_VALIDATORS").expect("PROJECT_VM_CLOUD_INIT_VALIDATORS");
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("typo.yaml"), "#cloud-config\npacakges: [htop]\n");
    let w = world(&[&fixture(), dir.path()]);
    let with = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["--connect", "test:///default", "--config"])
            .arg(&w.config)
            .args(args)
            .env("PROJECT_VM_CLOUD_INIT_VALIDATORS", &validators)
            .output()
            .unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = with(&["feature", "show", "hello"]);
    assert_eq!(code, 0, "the fixture is schema-clean on every validator: {err}");
    let (code, err) = with(&["feature", "show", "typo"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&dir.path().join("typo.yaml").display().to_string()) && err.contains("pacakges"), "{err}");
    assert!(err.contains("cloud-init's schema check"), "{err}");
}

#[test]
fn feature_dirs_are_one_list_for_every_host_and_absolute() {
    use project_vm::settings::HostSettings;
    let e = HostSettings::from_json(
        r#"{"hosts": {"gpu": {"uri": "qemu+ssh://root@gpu/system", "feature_dirs": ["/srv/f"]}}}"#,
        "s.json",
    )
    .unwrap_err();
    assert!(e.to_string().contains("hosts.gpu.feature_dirs: not a host setting"), "{e}");
    let e = HostSettings::from_json(r#"{"feature_dirs": ["/ok", "rel"]}"#, "s.json").unwrap_err();
    assert!(
        matches!(e.downcast_ref::<ConfigError>(), Some(ConfigError::File { problems, .. }) if problems.len() == 1 && problems[0].starts_with("feature_dirs[1]: \"rel\" is relative")),
        "{e}"
    );
    let ok = HostSettings::from_json(r#"{"feature_dirs": ["/a", "/b"]}"#, "s.json").unwrap();
    assert_eq!(ok.feature_dirs, Some(vec![PathBuf::from("/a"), PathBuf::from("/b")]));
    assert_eq!(features::default_dirs().last(), Some(&PathBuf::from("/etc/project-vm/features")));
}

/// The only test here that sets the process-wide library (`use_dirs`):
/// the others load libraries of their own.
#[test]
fn an_edited_feature_of_your_own_changes_the_vms_cloud_init_fingerprint() {
    use project_vm::ops::create::CreateRequest;
    use project_vm::spec::{Host, Network, Resources, VmName, VmSpec};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mine.yaml");
    write(&file, "#cloud-config\npackages: [htop]\n");
    let hash = |features: &[&str]| {
        features::use_dirs(&[dir.path().to_owned()]);
        let req = CreateRequest {
            name: VmName::parse("fp").unwrap(),
            resources: Resources::default(),
            image: None,
            user_data: None,
            features: features.iter().map(|f| f.to_string()).collect(),
            autostart: false,
            devices: Default::default(),
            stage_snapshots: false,
            provision: Default::default(),
        };
        let network = Network::User { ssh_port: 22022 };
        let host = Host {
            accel: project_vm::spec::Accel::Tcg,
            network: &network,
            ssh_user: "dev",
            authorized_keys: &[],
            tailnet: None,
            tailscale: false,
        };
        VmSpec::resolve(&host, &req.declaration(), "base".into(), None).cloud_init_hash
    };
    let before = hash(&["mine"]);
    assert_eq!(before, hash(&["mine"]), "the same content, the same fingerprint");
    write(&file, "#cloud-config\npackages: [htop, tmux]\n");
    let after = hash(&["mine"]);
    assert_ne!(before, after, "an edited feature is a change plan shows");
    // Built-ins only: no digest, the fingerprint project-vm always made.
    assert_eq!(features::own_digest(&["docker".to_string()]), None);
    assert!(features::own_digest(&["mine".to_string()]).is_some());
    features::use_dirs(&[]);
}

#[test]
fn a_link_in_files_is_refused_never_followed_and_a_directory_named_twice_is_read_once() {
    let dir = tempfile::tempdir().unwrap();
    let feature = dir.path().join("linked");
    write(&feature.join("feature.yaml"), "#cloud-config\npackages: [htop]\n");
    std::fs::create_dir_all(feature.join("files")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", feature.join("files/shadow")).unwrap();
    match refusal(dir.path(), "linked") {
        ConfigError::FeatureInvalid { why, .. } => assert!(why.contains("symbolic link"), "{why}"),
        other => panic!("{other:?}"),
    }
    let good = tempfile::tempdir().unwrap();
    write(&good.path().join("good.yaml"), "#cloud-config\npackages: [htop]\n");
    let twice = Library::load(&[good.path().to_owned(), good.path().to_owned()]);
    assert!(twice.get("good").is_ok(), "a directory named twice shadows nothing");
    assert_eq!(twice.names(), Library::load(&[good.path().to_owned()]).names());
}
