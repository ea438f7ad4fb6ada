{
  description = "project-vm: one libvirt VM per project";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      # Plain builtins, not nixpkgs.lib: the flake's shape (and
      # nixosModules.default) evaluates without fetching nixpkgs.
      forAllSystems =
        f:
        builtins.listToAttrs (
          map (system: {
            name = system;
            value = f system;
          }) systems
        );
      pkgsFor = system: nixpkgs.legacyPackages.${system};
    in
    {
      nixosModules.default = import ./nix/module.nix;

      overlays.default = final: _prev: { project-vm = final.callPackage ./nix/package.nix { }; };

      packages = forAllSystems (system: rec {
        project-vm = (pkgsFor system).callPackage ./nix/package.nix { };
        default = project-vm;
      });

      apps = forAllSystems (
        system:
        let
          app = {
            type = "app";
            program = "${self.packages.${system}.project-vm}/bin/project-vm";
          };
        in
        {
          project-vm = app;
          default = app;
        }
      );

      checks = forAllSystems (
        system:
        let
          pkgs = pkgsFor system;
          package = self.packages.${system}.project-vm;
        in
        {
          # Builds and runs the unit and libvirt test-driver tests.
          inherit package;

          clippy = package.overrideAttrs (old: {
            pname = "project-vm-clippy";
            nativeBuildInputs = old.nativeBuildInputs ++ [ pkgs.clippy ];
            buildPhase = "cargo clippy --offline --all-targets --features fault-injection -- -D warnings";
            doCheck = false;
            installPhase = "touch $out";
            postInstall = "";
          });

          fmt = pkgs.runCommand "project-vm-fmt" { nativeBuildInputs = [ pkgs.cargo pkgs.rustfmt ]; } ''
            cd ${./.}
            cargo fmt --check
            touch $out
          '';

          module-eval = pkgs.writeText "project-vm-module-eval.json" (
            builtins.toJSON (import ./tests/nix/eval-module.nix { inherit (pkgs) lib; })
          );

          vm-test = import ./nix/vm-test.nix {
            inherit pkgs;
            module = self.nixosModules.default;
          };
        }
      );

      devShells = forAllSystems (
        system:
        let
          pkgs = pkgsFor system;
        in
        {
          default = pkgs.mkShell {
            inputsFrom = [ self.packages.${system}.project-vm ];
            packages = with pkgs; [
              cargo
              rustc
              clippy
              rustfmt
              rust-analyzer
              libvirt
              qemu-utils
              xorriso
            ];
          };
        }
      );
    };
}
