# NixOS VM test (needs a machine with a binary cache and KVM): a host declares
# one VM through the module and the apply unit brings it up. The guest image is
# an empty qcow2 made here, so the test checks the host side (pool, volumes,
# domain, autostart, idempotent re-apply), not a guest boot; the repository's
# end-to-end tests boot real guests.
{ pkgs, module }:

let
  baseImage = pkgs.runCommand "empty-base.qcow2" { nativeBuildInputs = [ pkgs.qemu-utils ]; } ''
    qemu-img create -f qcow2 $out 1G
  '';
in
pkgs.testers.runNixOSTest {
  name = "project-vm";
  nodes.host = {
    imports = [ module ];
    virtualisation.memorySize = 2048;
    services.project-vm = {
      enable = true;
      inherit baseImage;
      accel = "tcg";
      network.user = 22022;
      sshAuthorizedKeys = [ "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHx3RkjeaGpVpc+E5Ij6BNd7ZfHu1i06XcvCGDBjJx6K test" ];
      tailnet = "example.ts.net";
      vms.web = {
        memory = "512M";
        cpus = 1;
        disk = "2G";
        projectDisk = "1G";
        autostart = true;
      };
    };
  };
  testScript = ''
    import json
    host.wait_for_unit("project-vm-apply.service")
    vms = json.loads(host.succeed("project-vm list --json"))
    assert [v["name"] for v in vms] == ["web"], vms
    assert vms[0]["state"] == "running", vms
    uuid = host.succeed("virsh domuuid project-web").strip()
    host.succeed("systemctl restart project-vm-apply.service")
    assert host.succeed("virsh domuuid project-web").strip() == uuid
    out = json.loads(host.succeed("project-vm plan -f /etc/project-vm/vms.json --json"))
    assert out["changes"] == 0, out
    host.succeed("project-vm status web | grep -q project-web.example.ts.net")
  '';
}
