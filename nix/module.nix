# NixOS module: declare project-vm's VMs in the host's configuration.
#
# Deliberately thin: the options (typed, so bad values fail at evaluation with
# the option's path) become one JSON document in project-vm's declarative
# format, and one oneshot unit runs `project-vm apply` on it after libvirtd,
# again whenever the document changes. All logic lives in the Rust binary,
# where it is tested. No flake inputs are used, so the module evaluates even
# where they cannot be fetched.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib) mkOption mkEnableOption mkIf types;
  cfg = config.services.project-vm;

  namePattern = "[a-z][a-z0-9-]{0,47}";
  sizeType = types.strMatching "[0-9]+(\\.[0-9]+)?[KMGT](i?B)?" // {
    description = "size in binary units, like \"512M\" or \"8G\"";
  };
  builtinFeatures = [
    "base"
    "devtools"
    "docker"
    "docker-gpu"
    "nix"
    "nvidia"
  ];
  featureNamePattern = "[a-z0-9][a-z0-9_-]{0,63}";
  # The built-ins and the features declared in featureDefinitions.
  features = builtinFeatures ++ lib.attrNames cfg.featureDefinitions;

  # One entry of the features directory: an attribute set or a string
  # becomes NAME.yaml; a path to a directory (feature.yaml, script.sh,
  # files/) stays NAME/; any other path (or a package) is NAME.yaml.
  featureEntry =
    name: def:
    if builtins.isAttrs def && !(lib.isStringLike def) then
      {
        name = "${name}.yaml";
        path = pkgs.writeText "${name}.yaml" ("#cloud-config\n" + builtins.toJSON def + "\n");
      }
    else if builtins.isString def && !(lib.hasPrefix "/" def) then
      {
        name = "${name}.yaml";
        path = pkgs.writeText "${name}.yaml" def;
      }
    else if builtins.isPath def && builtins.pathExists (def + "/feature.yaml") then
      {
        inherit name;
        path = def;
      }
    else
      {
        name = "${name}.yaml";
        path = def;
      };
  featuresDir = pkgs.linkFarm "project-vm-features" (lib.mapAttrsToList featureEntry cfg.featureDefinitions);

  # VM settings; null means "take it from defaults" (or project-vm's default).
  vmOptions = isDefaults: {
    memory = mkOption {
      type = types.nullOr sizeType;
      default = null;
      example = "8G";
      description = "Memory (binary units).";
    };
    cpus = mkOption {
      type = types.nullOr (types.ints.between 1 512);
      default = null;
      example = 4;
      description = "Virtual CPUs.";
    };
    disk = mkOption {
      type = types.nullOr sizeType;
      default = null;
      example = "50G";
      description = "Root disk size (a copy-on-write overlay on the base image).";
    };
    projectDisk = mkOption {
      type = types.nullOr sizeType;
      default = null;
      example = "100G";
      description = "Size of the persistent project disk, mounted at /project. It only grows.";
    };
    autostart = mkOption {
      type = types.nullOr types.bool;
      default = null;
      description = "Start the VM with the host and whenever the configuration is applied.";
    };
    features = mkOption {
      type = types.nullOr (types.listOf (types.enum features));
      default = null;
      example = [
        "base"
        "docker"
      ];
      description = "Features (cloud-config snippets) by name: built-ins (base, devtools, docker, docker-gpu, nix, nvidia) and those of featureDefinitions.";
    };
    stageSnapshots = mkOption {
      type = types.nullOr types.bool;
      default = null;
      description = "Snapshots `pre-configured` (features done) and `final-form` (application script and checks passed), taken by the first provisioning's `apply --wait`.";
    };
    userData = mkOption {
      type = types.nullOr types.path;
      default = null;
      description = "A #cloud-config file merged into the generated one (first boot only).";
    };
    image = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "Base image for this VM (volume name or path); default: baseImage.";
    };
    applicationScript = mkOption {
      type = types.nullOr types.path;
      default = null;
      description = "A script run once, last, after the features on the first boot; its exit status and last lines reach `--wait` (exit 5 when it fails).";
    };
    checks = mkOption {
      type = types.listOf (
        types.submodule {
          options = {
            name = mkOption {
              type = types.strMatching "[a-z0-9][a-z0-9_.-]{0,31}";
              description = "The check's name, as `project-vm check` and `--wait` show it.";
            };
            command = mkOption {
              type = types.str;
              example = "curl -fsS localhost:8080/health";
              description = "Run by `sh -c` as root in the guest; the check passes when it exits 0.";
            };
            timeout = mkOption {
              type = types.nullOr (types.strMatching "[0-9]+(s|m|h)");
              default = null;
              description = "Each attempt's time limit (default 10s).";
            };
            retries = mkOption {
              type = types.nullOr (types.ints.between 0 1000);
              default = null;
              description = "Attempts after the first (default 10).";
            };
            interval = mkOption {
              type = types.nullOr (types.strMatching "[0-9]+(s|m|h)");
              default = null;
              description = "Time between attempts (default 2s).";
            };
          };
        }
      );
      default = [ ];
      description = "Health checks: run after the application script on the first boot, by `project-vm check`, and by `--wait` (exit 9 when one fails). The defaults' come first; a VM's check of the same name replaces the defaults'.";
    };
    firmware = mkOption {
      type = types.nullOr (
        types.enum [
          "bios"
          "efi"
        ]
      );
      default = null;
      description = "bios (default), or efi: UEFI through libvirt's firmware autoselection (the host needs OVMF).";
    };
  }
  // lib.optionalAttrs (!isDefaults) {
    dependsOn = mkOption {
      type = types.listOf (types.strMatching namePattern);
      default = [ ];
      description = "VMs created and started before this one.";
    };
    shares = mkOption {
      type = types.listOf (
        types.submodule {
          options = {
            source = mkOption {
              type = types.strMatching "/.*";
              description = "The host directory.";
            };
            target = mkOption {
              type = types.strMatching "/[^[:space:]]+";
              description = "Where the guest mounts it.";
            };
            readonly = mkOption {
              type = types.bool;
              default = false;
              description = "Mount it read-only in the guest.";
            };
          };
        }
      );
      default = [ ];
      example = [
        {
          source = "/srv/datasets";
          target = "/mnt/datasets";
          readonly = true;
        }
      ];
      description = "Host directories shared over virtiofs (the host needs virtiofsd).";
    };
    hostdevs = mkOption {
      type = types.listOf (types.strMatching "([0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[01][0-9a-fA-F]\\.[0-7]");
      default = [ ];
      example = [ "0000:01:00.0" ];
      description = "Host PCI devices passed through (managed; implies efi). The host needs IOMMU and vfio.";
    };
    ports = mkOption {
      type = types.listOf (
        types.submodule {
          options = {
            host = mkOption {
              type = types.ints.between 1 65535;
              description = "The port on the libvirt host (from 1024 up: passt forwards as an unprivileged user).";
            };
            guest = mkOption {
              type = types.ints.between 1 65535;
              description = "The guest's port it reaches.";
            };
            address = mkOption {
              type = types.nullOr (types.strMatching "[0-9a-fA-F.:]+");
              default = null;
              description = "The host address to listen on; default (null): 127.0.0.1.";
            };
            protocol = mkOption {
              type = types.enum [
                "tcp"
                "udp"
              ];
              default = "tcp";
              description = "tcp or udp.";
            };
          };
        }
      );
      default = [ ];
      example = [
        {
          host = 8080;
          guest = 80;
        }
      ];
      description = ''
        Guest ports forwarded from the libvirt host by passt (user networking;
        they apply at the VM's next start). With a libvirt network or a bridge
        the guest's own address is reachable and nothing is forwarded.
      '';
    };
    networkConfig = mkOption {
      type = types.nullOr (
        types.submodule {
          options = {
            address = mkOption {
              type = types.strMatching "[0-9a-fA-F.:]+/[0-9]+";
              example = "10.0.0.5/24";
              description = "The VM's address with its prefix.";
            };
            gateway = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = "Default gateway, inside the VM's network.";
            };
            dns = mkOption {
              type = types.listOf types.str;
              default = [ ];
              description = "DNS servers.";
            };
          };
        }
      );
      default = null;
      description = "A fixed address instead of DHCP (applied on the VM's first boot).";
    };
  };

  # Option names -> the declarative file's keys, nulls dropped.
  vmJson =
    v:
    lib.filterAttrs (_: x: x != null && x != [ ]) {
      inherit (v) memory cpus disk autostart features image firmware;
      project_disk = v.projectDisk;
      stage_snapshots = v.stageSnapshots or null;
      user_data = if v.userData == null then null else toString v.userData;
      application_script = if v.applicationScript == null then null else toString v.applicationScript;
      checks = map (c: lib.filterAttrs (_: x: x != null) c) v.checks;
      depends_on = v.dependsOn or [ ];
      hostdevs = v.hostdevs or [ ];
      shares = v.shares or [ ];
      ports = map (lib.filterAttrs (_: x: x != null)) (v.ports or [ ]);
      network_config =
        if (v.networkConfig or null) == null then
          null
        else
          lib.filterAttrs (_: x: x != null && x != [ ]) v.networkConfig;
    };

  settings = lib.filterAttrs (_: x: x != null && x != [ ]) {
    storage_dir = cfg.storageDir;
    pool = cfg.pool;
    base_image = if cfg.baseImage == null then null else toString cfg.baseImage;
    images =
      if cfg.images == { } then
        null
      else
        lib.mapAttrs (_: i: lib.filterAttrs (_: x: x != null) i) cfg.images;
    accel = cfg.accel;
    network = cfg.network;
    ssh_user = cfg.sshUser;
    ssh_authorized_keys = cfg.sshAuthorizedKeys;
    tailnet = cfg.tailnet;
    tailscale_auth_key_file = cfg.tailscaleAuthKeyFile;
  };

  document = settings // lib.optionalAttrs (cfg.featureDefinitions != { }) {
    # apply uses the declared features only (not root's own directory).
    feature_dirs = [ "/etc/project-vm/features" ];
  } // {
    defaults = vmJson cfg.defaults;
    vms = lib.mapAttrs (_: vmJson) cfg.vms;
  };

  vmsFile = pkgs.writeText "project-vm-vms.json" (builtins.toJSON document);

  applyArgs = lib.concatStringsSep " " (
    [
      "apply"
      "--file"
      "${vmsFile}"
    ]
    ++ lib.optional cfg.prune "--prune"
    ++ lib.optional (cfg.prune && cfg.deleteDataOfRemoved) "--delete-data"
  );
in
{
  options.services.project-vm = {
    enable = mkEnableOption "project-vm, one libvirt VM per project";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./package.nix { }";
      description = "The project-vm package.";
    };

    storageDir = mkOption {
      type = types.strMatching "/.*";
      default = "/var/lib/project-vm";
      description = "Directory of the libvirt storage pool holding images and VM disks.";
    };

    pool = mkOption {
      type = types.strMatching "[A-Za-z0-9_.-]+";
      default = "project-vm";
      description = "Name of the libvirt storage pool.";
    };

    baseImage = mkOption {
      type = types.nullOr (types.either types.path (types.strMatching "[A-Za-z0-9][A-Za-z0-9._-]*"));
      default = null;
      example = lib.literalExpression ''
        pkgs.fetchurl {
          url = "https://cloud.debian.org/images/cloud/trixie/latest/debian-13-genericcloud-amd64.qcow2";
          hash = "sha256-...";
        }
      '';
      description = ''
        Base cloud image: an image name from the catalog (debian-12, debian-13,
        ubuntu-22.04, ubuntu-24.04, or one from `images`), pulled and checked on
        first use; or a file (a fetched store path), imported into the pool on
        first use. Default (null): project-vm's default, debian-13.
      '';
    };

    images = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = {
            url = mkOption {
              type = types.str;
              description = "Where the image is: https://, http://, file:// or an absolute path.";
            };
            checksums = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = "A checksum file (SHA256SUMS, SHA512SUMS) listing the image by its file name.";
            };
            checksum = mkOption {
              type = types.nullOr (types.strMatching "(sha256:[0-9a-fA-F]{64}|sha512:[0-9a-fA-F]{128})");
              default = null;
              description = "The image's digest, sha256:HEX or sha512:HEX.";
            };
          };
        }
      );
      default = { };
      example = {
        debian-13 = {
          url = "https://mirror.example.org/debian-13-genericcloud-amd64.qcow2";
          checksums = "https://mirror.example.org/SHA512SUMS";
        };
      };
      description = "Images added to, or overriding, project-vm's built-in catalog (mirrors, local images).";
    };

    accel = mkOption {
      type = types.enum [
        "kvm"
        "tcg"
      ];
      default = "kvm";
      description = "kvm, or tcg (software emulation) where KVM does not work.";
    };

    network = mkOption {
      type = types.attrTag {
        network = lib.mkOption { type = types.str; description = "A libvirt network name."; };
        bridge = lib.mkOption { type = types.str; description = "A host bridge."; };
        user = lib.mkOption { type = types.port; description = "User networking; first loopback ssh port."; };
      } // { description = "network"; };
      default = {
        network = "default";
      };
      example = {
        bridge = "br0";
      };
      apply =
        n:
        if n ? network then
          {
            type = "network";
            name = n.network;
          }
        else if n ? bridge then
          {
            type = "bridge";
            name = n.bridge;
          }
        else
          {
            type = "user";
            ssh_port = n.user;
          };
      description = "How guests are attached: { network = \"default\"; }, { bridge = \"br0\"; } or { user = 22022; } (passt, port forwarded from 127.0.0.1).";
    };

    sshUser = mkOption {
      type = types.strMatching "[a-z_][a-z0-9_-]{0,31}";
      default = "dev";
      description = "User created in each guest, with passwordless sudo.";
    };

    sshAuthorizedKeys = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Public keys authorized for sshUser (default: root's ~/.ssh/*.pub).";
    };

    tailnet = mkOption {
      type = types.nullOr (types.strMatching "[A-Za-z0-9-]+(\\.[A-Za-z0-9-]+)+");
      default = null;
      example = "example.ts.net";
      description = "Tailnet domain: `project-vm ssh foo` goes to project-foo.<tailnet>.";
    };

    tailscaleAuthKeyFile = mkOption {
      type = types.nullOr (types.strMatching "/.*");
      default = null;
      example = "/run/secrets/tailscale-auth-key";
      description = "File holding a Tailscale auth key, read when a VM is created. A string, not a path, so the key never enters the Nix store.";
    };

    featureDefinitions = mkOption {
      type = types.attrsOf (
        types.oneOf [
          types.path
          types.str
          (types.attrsOf types.anything)
        ]
      );
      default = { };
      example = lib.literalExpression ''
        {
          motd = { write_files = [ { path = "/etc/motd"; content = "managed by project-vm\\n"; } ]; };
          redis = "#cloud-config\\npackages: [redis-server]\\n";
          app = ./features/app; # feature.yaml, script.sh, files/
        }
      '';
      description = ''
        Features of your own, by name, for `features`: an attribute set (the
        cloud-config itself), a string (a snippet starting with
        "#cloud-config"), or a path (a NAME.yaml snippet, or a directory with
        feature.yaml and optionally script.sh and files/). They are linked
        into /etc/project-vm/features, which `apply` reads; project-vm checks
        each (YAML, merge rules, the cloud-config guard) when it plans.
      '';
    };

    defaults = mkOption {
      type = types.submodule { options = vmOptions true; };
      default = { };
      description = "Settings merged into every VM.";
    };

    vms = mkOption {
      type = types.attrsOf (types.submodule { options = vmOptions false; });
      default = { };
      example = lib.literalExpression ''
        {
          web = { memory = "8G"; cpus = 4; autostart = true; };
          db = { disk = "100G"; dependsOn = [ "web" ]; };
        }
      '';
      description = "VMs by name (the libvirt domain is project-<name>).";
    };

    prune = mkOption {
      type = types.bool;
      default = true;
      description = "Destroy project-vm VMs that are no longer declared. Their project disks are kept unless deleteDataOfRemoved is set.";
    };

    deleteDataOfRemoved = mkOption {
      type = types.bool;
      default = false;
      description = "Also delete the project disks of VMs removed from the configuration.";
    };

    suspendOnShutdown = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Save every running project-vm VM (libvirt's managed save: `project-vm suspend --all`)
        when the host shuts down, and resume them where they were when it starts
        (`project-vm start --suspended`), the way libvirt-guests does. VMs that cannot be
        saved (virtiofs shares, passthrough devices) are named in the journal and shut
        down with the host as before.
      '';
    };

    suspendTimeout = mkOption {
      type = types.ints.between 10 3600;
      default = 300;
      description = "Seconds the host's shutdown waits for the VMs' memory to be saved.";
    };
  };

  config = mkIf cfg.enable {
    assertions =
      lib.mapAttrsToList (name: _: {
        assertion = builtins.match namePattern name != null;
        message = "services.project-vm.vms.${name}: invalid VM name; use 1 to 48 characters, lowercase letters, digits and '-', starting with a letter";
      }) cfg.vms
      ++ lib.mapAttrsToList (name: _: {
        assertion = builtins.match featureNamePattern name != null && !(lib.elem name builtinFeatures);
        message = "services.project-vm.featureDefinitions.${name}: use lowercase letters, digits, '-' and '_' (at most 64), and not a built-in's name (${lib.concatStringsSep ", " builtinFeatures})";
      }) cfg.featureDefinitions
      ++ lib.concatLists (
        lib.mapAttrsToList (
          name: vm:
          map (dep: {
            assertion = cfg.vms ? ${dep};
            message = "services.project-vm.vms.${name}.dependsOn: \"${dep}\" is not a declared VM";
          }) vm.dependsOn
        ) cfg.vms
      );

    virtualisation.libvirtd.enable = true;
    environment.systemPackages = [ cfg.package ];
    systemd.tmpfiles.rules = [ "d ${cfg.storageDir} 0711 root root -" ];

    # Host settings for interactive use of the CLI on this host.
    environment.etc."project-vm/config.json".text = builtins.toJSON settings;
    environment.etc."project-vm/vms.json".source = vmsFile;
    environment.etc."project-vm/features" = mkIf (cfg.featureDefinitions != { }) { source = featuresDir; };

    systemd.services.project-vm-apply = {
      description = "Bring project-vm VMs in line with the configuration";
      wantedBy = [ "multi-user.target" ];
      requires = [ "libvirtd.service" ];
      after = [
        "libvirtd.service"
        "network-online.target"
      ];
      wants = [ "network-online.target" ];
      # Re-run when the document changes; apply itself never restarts a VM
      # that did not change.
      restartTriggers = [ vmsFile ];
      environment.PROJECT_VM_CONFIG = "/etc/project-vm/config.json";
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        ExecStart = "${lib.getExe cfg.package} --connect qemu:///system ${applyArgs}";
      };
    };

    # Started after libvirtd, so stopped before it: at shutdown the VMs are
    # saved while the daemon still runs; at boot the saved ones are resumed
    # before apply looks at them.
    systemd.services.project-vm-suspend = mkIf cfg.suspendOnShutdown {
      description = "Save running project-vm VMs at host shutdown, resume them at start";
      wantedBy = [ "multi-user.target" ];
      requires = [ "libvirtd.service" ];
      after = [ "libvirtd.service" ];
      before = [ "project-vm-apply.service" ];
      environment.PROJECT_VM_CONFIG = "/etc/project-vm/config.json";
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        ExecStart = "${lib.getExe cfg.package} --connect qemu:///system start --suspended";
        ExecStop = "${lib.getExe cfg.package} --connect qemu:///system suspend --all";
        TimeoutStopSec = cfg.suspendTimeout;
      };
    };
  };
}
