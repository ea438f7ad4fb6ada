# Evaluates nix/module.nix with lib.evalModules alone (no nixpkgs packages),
# declaring minimal versions of the NixOS options the module sets. Returns
# what the module generates; throws when an expectation fails.
#   nix-instantiate --eval --strict --json tests/nix/eval-module.nix --arg lib 'import <nixpkgs-lib>/lib'
# `config` overrides the example configuration (used to check bad values).
{
  lib,
  config ? null,
}:

let
  inherit (lib) mkOption types;

  # The NixOS options the module sets, reduced to what it needs.
  nixosStubs = {
    options = {
      assertions = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      virtualisation.libvirtd.enable = mkOption {
        type = types.bool;
        default = false;
      };
      environment.systemPackages = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      environment.etc = mkOption {
        type = types.attrsOf (
          types.submodule {
            options.text = mkOption {
              type = types.nullOr types.str;
              default = null;
            };
            options.source = mkOption {
              type = types.nullOr types.unspecified;
              default = null;
            };
          }
        );
        default = { };
      };
      systemd.tmpfiles.rules = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      systemd.services = mkOption {
        type = types.attrsOf types.unspecified;
        default = { };
      };
    };
  };

  # Stand-ins for the few pkgs functions the module calls.
  fakePackage = {
    type = "derivation";
    name = "project-vm-0.1.0";
    outPath = "/nix/store/00000000000000000000000000000000-project-vm-0.1.0";
    meta.mainProgram = "project-vm";
  };
  pkgs = {
    writeText = name: text: {
      inherit name text;
      outPath = "/nix/store/11111111111111111111111111111111-${name}";
    };
    callPackage = _: _: fakePackage;
    linkFarm = name: entries: {
      inherit name entries;
      outPath = "/nix/store/22222222222222222222222222222222-${name}";
    };
  };

  example = {
    services.project-vm = {
      enable = true;
      baseImage = "debian-13";
      images.debian-13 = {
        url = "https://mirror.example.org/debian-13-genericcloud-amd64.qcow2";
        checksums = "https://mirror.example.org/SHA512SUMS";
      };
      tailnet = "example.ts.net";
      suspendOnShutdown = true;
      tailscaleAuthKeyFile = "/run/secrets/tailscale-auth-key";
      sshAuthorizedKeys = [ "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHx3RkjeaGpVpc+E5Ij6BNd7ZfHu1i06XcvCGDBjJx6K me@laptop" ];
      defaults = {
        memory = "4G";
        cpus = 2;
        disk = "20G";
        projectDisk = "50G";
        features = [ "base" ];
      };
      vms = {
        web = {
          memory = "8G";
          cpus = 4;
          autostart = true;
          ports = [
            {
              host = 8080;
              guest = 80;
            }
            {
              host = 5353;
              guest = 53;
              protocol = "udp";
              address = "0.0.0.0";
            }
          ];
          stageSnapshots = true;
        };
        db = {
          disk = "100G";
          dependsOn = [ "web" ];
          firmware = "efi";
          shares = [
            {
              source = "/srv/data";
              target = "/mnt/data";
              readonly = true;
            }
          ];
          networkConfig = {
            address = "10.0.0.5/24";
            gateway = "10.0.0.1";
            dns = [ "10.0.0.1" ];
          };
        };
      };
    };
  };

  eval = lib.evalModules {
    modules = [
      nixosStubs
      ../../nix/module.nix
      (if config == null then example else config)
      { _module.args.pkgs = pkgs; }
    ];
  };
  cfg = eval.config;
  failed = lib.filter (a: !a.assertion) cfg.assertions;
  document = builtins.fromJSON cfg.environment.etc."project-vm/vms.json".source.text;
  unit = cfg.systemd.services.project-vm-apply;
  check = cond: msg: if cond then true else throw "module-eval: ${msg}";
in
assert check (failed == [ ]) (lib.concatMapStringsSep "\n" (a: a.message) failed);
assert check cfg.virtualisation.libvirtd.enable "libvirtd is not enabled";
assert check (lib.elem "d /var/lib/project-vm 0711 root root -" cfg.systemd.tmpfiles.rules) "no tmpfiles rule for the storage dir";
{
  inherit document;
  settings = builtins.fromJSON cfg.environment.etc."project-vm/config.json".text;
  execStart = unit.serviceConfig.ExecStart;
  after = unit.after;
  restartTriggers = map (t: t.name) unit.restartTriggers;
  # The unit exists only with suspendOnShutdown.
  suspend =
    if cfg.systemd.services ? project-vm-suspend then
      {
        inherit (cfg.systemd.services.project-vm-suspend) after before;
        inherit (cfg.systemd.services.project-vm-suspend.serviceConfig) ExecStart ExecStop TimeoutStopSec;
      }
    else
      null;
  features = map (e: {
    inherit (e) name;
    path = toString e.path;
    text = e.path.text or null;
  }) (cfg.environment.etc."project-vm/features".source.entries or [ ]);
}
