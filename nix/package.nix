# The project-vm package: built from this repository with its Cargo.lock,
# linked against libvirt, with the tools it runs at run time on its PATH.
{
  lib,
  rustPlatform,
  pkg-config,
  makeWrapper,
  installShellFiles,
  libvirt,
  openssh,
}:

rustPlatform.buildRustPackage {
  pname = "project-vm";
  version = (lib.importTOML ../Cargo.toml).package.version;

  # cleanSourceWith rather than lib.fileset: it also evaluates on older Nix
  # (lib.fileset needs builtins.readFileType, Nix 2.14+).
  src = lib.cleanSourceWith {
    src = ../.;
    filter =
      path: _type:
      let
        rel = lib.removePrefix (toString ../. + "/") (toString path);
        top = builtins.head (lib.splitString "/" rel);
      in
      builtins.elem top [
        "Cargo.toml"
        "Cargo.lock"
        "src"
        "cloud-init"
        "tests"
        # tests/docs.rs holds the README to the code.
        "README.md"
      ];
  };
  cargoLock.lockFile = ../Cargo.lock;

  nativeBuildInputs = [
    pkg-config
    makeWrapper
    installShellFiles
  ];
  buildInputs = [ libvirt ];

  # `cargo test` runs the unit tests and the libvirt test-driver tests; the
  # tests that need a libvirtd and boot guests are #[ignore]d and run by
  # scripts/test.sh (and the NixOS VM test in flake.nix).
  doCheck = true;

  postInstall = ''
    # ssh is the one program project-vm runs (for `project-vm ssh`).
    wrapProgram $out/bin/project-vm --prefix PATH : ${lib.makeBinPath [ openssh ]}
    installShellCompletion --cmd project-vm \
      --bash <($out/bin/project-vm completions bash) \
      --zsh <($out/bin/project-vm completions zsh) \
      --fish <($out/bin/project-vm completions fish)
    # The man page, made from the same clap definitions as --help.
    $out/bin/project-vm man > project-vm.1
    installManPage project-vm.1
  '';

  meta = {
    description = "One libvirt VM per project: qcow2 overlays, a persistent project disk, cloud-init, pinned ssh";
    license = with lib.licenses; [
      mit
      asl20
    ];
    mainProgram = "project-vm";
    platforms = lib.platforms.linux;
  };
}
