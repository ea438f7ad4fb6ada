# A stand-in for nixpkgs' flake outputs, for checking this flake's shape
# offline (`nix flake show --override-input nixpkgs …`, see
# tests/nix/flake-offline.sh). `lib` is the real nixpkgs lib; builders return
# stand-in derivations. callPackage really evaluates the package file with the
# arguments it asks for, so a wrong argument name or a broken fileset fails here.
lib:
let
  drv = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
    drvPath = "/nix/store/00000000000000000000000000000000-${name}.drv";
    overrideAttrs = f: drv "${name}-overridden";
  };
  pkgs = {
    inherit lib;
    path = "/nix/store/00000000000000000000000000000000-nixpkgs";
    rustPlatform.buildRustPackage =
      attrs:
      assert attrs.cargoLock.lockFile != null;
      assert lib.isString "${attrs.src}";
      drv "${attrs.pname}-${attrs.version}" // { inherit (attrs) meta; };
    callPackage =
      f: args:
      let
        fn = import f;
      in
      fn (builtins.intersectAttrs (builtins.functionArgs fn) pkgs // args);
    runCommand = name: _: _: drv name;
    writeText = name: _: drv name;
    linkFarm = name: _: drv name;
    mkShell = _: drv "shell";
    testers.runNixOSTest = t: drv "nixos-test-${t.name}";
  }
  // lib.genAttrs [
    "pkg-config"
    "makeWrapper"
    "installShellFiles"
    "libvirt"
    "openssh"
    "clippy"
    "cargo"
    "rustc"
    "rustfmt"
    "rust-analyzer"
    "qemu-utils"
    "xorriso"
  ] drv;
in
{
  inherit lib;
  legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] (_: pkgs);
}
