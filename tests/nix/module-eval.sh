#!/usr/bin/env bash
# Evaluates the NixOS module with lib.evalModules (tests/nix/eval-module.nix)
# against a lib-only nixpkgs at $NIXPKGS_LIB (e.g. a snapshot of
# nix-community/nixpkgs.lib). Checks the generated JSON document against the
# committed fixture that the Rust tests parse with apply's parser, the
# generated unit, and that bad values fail naming the option.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ -z ${NIXPKGS_LIB:-} ]]; then
  echo "skipped: module evaluation (NIXPKGS_LIB is not set; point it at a nixpkgs lib checkout)"
  exit 0
fi
lib="import $NIXPKGS_LIB/lib"
eval_module() { nix-instantiate --eval --strict --json tests/nix/eval-module.nix --arg lib "$lib" "$@"; }

out=$(eval_module)
python3 - "$out" tests/fixtures/module-vms.json <<'PY'
import json, sys
got = json.loads(sys.argv[1])
with open(sys.argv[2]) as f:
    fixture = json.load(f)
assert got["document"] == fixture, "the module's JSON differs from tests/fixtures/module-vms.json:\n" + json.dumps(got["document"], indent=2, sort_keys=True)
ex = got["execStart"]
assert ex.endswith("/bin/project-vm --connect qemu:///system apply --file /nix/store/11111111111111111111111111111111-project-vm-vms.json --prune"), ex
assert "libvirtd.service" in got["after"], got["after"]
assert got["restartTriggers"] == ["project-vm-vms.json"], got["restartTriggers"]
su = got["suspend"]
assert su["ExecStart"].endswith("/bin/project-vm --connect qemu:///system start --suspended"), su
assert su["ExecStop"].endswith("/bin/project-vm --connect qemu:///system suspend --all"), su
assert "libvirtd.service" in su["after"] and su["before"] == ["project-vm-apply.service"], su
assert su["TimeoutStopSec"] == 300, su
assert "vms" not in got["settings"] and got["settings"]["tailnet"] == "example.ts.net", got["settings"]
PY
echo "ok: module evaluates; its document matches tests/fixtures/module-vms.json"

# Features of one's own: inline (an attribute set, a string) or a path (a
# directory stays NAME/), linked into /etc/project-vm/features, which the
# document names; a VM may name them beside the built-ins.
feat_config='{ services.project-vm = { enable = true;
  featureDefinitions = { motd = { write_files = [ { path = "/etc/motd"; content = "hi"; } ]; };
    redis = "#cloud-config\npackages: [redis-server]\n"; hello = ./tests/fixtures/features/hello; };
  vms.web.features = [ "docker-gpu" "motd" "hello" ]; }; }'
out=$(eval_module --arg config "$feat_config")
python3 - "$out" <<'PY'
import json, sys
got = json.loads(sys.argv[1])
doc = got["document"]
assert doc["feature_dirs"] == ["/etc/project-vm/features"], doc
assert doc["vms"]["web"]["features"] == ["docker-gpu", "motd", "hello"], doc["vms"]
assert "feature_dirs" not in got["settings"], got["settings"]
f = {e["name"]: e for e in got["features"]}
assert sorted(f) == ["hello", "motd.yaml", "redis.yaml"], f
assert f["motd.yaml"]["text"].startswith("#cloud-config\n") and json.loads(f["motd.yaml"]["text"].split("\n", 1)[1]) == {"write_files": [{"path": "/etc/motd", "content": "hi"}]}, f
assert f["redis.yaml"]["text"] == "#cloud-config\npackages: [redis-server]\n", f
assert f["hello"]["path"].endswith("-hello") or f["hello"]["path"].endswith("/hello"), f
PY
echo "ok: featureDefinitions (inline and as paths) become /etc/project-vm/features, named by the document"

fails=0
expect_fail() {
  local what=$1 config=$2 want=$3 err
  if err=$(eval_module --arg config "{ services.project-vm = { enable = true; $config }; }" 2>&1); then
    echo "FAIL: $what evaluated" >&2
    fails=$((fails + 1))
  elif ! grep -qF -- "$want" <<<"$err"; then
    echo "FAIL: $what: no \"$want\" in:" >&2
    echo "$err" | head -20 >&2
    fails=$((fails + 1))
  else
    echo "ok: $what fails naming $want"
  fi
}
expect_fail "a bad VM name" 'vms.Bad_Name = {};' 'services.project-vm.vms.Bad_Name: invalid VM name'
expect_fail "a bad size" 'vms.web.memory = "8X";' 'services.project-vm.vms.web.memory'
expect_fail "zero cpus" 'vms.web.cpus = 0;' 'services.project-vm.vms.web.cpus'
expect_fail "an unknown dependency" 'vms.web.dependsOn = [ "nope" ];' 'services.project-vm.vms.web.dependsOn: "nope" is not a declared VM'
expect_fail "an unknown feature" 'defaults.features = [ "dokcer" ];' 'services.project-vm.defaults.features'
expect_fail "a feature named like a built-in" 'featureDefinitions.docker = "#cloud-config\n";' 'services.project-vm.featureDefinitions.docker'
expect_fail "a bad feature name" 'featureDefinitions."My Feature" = "#cloud-config\n";' 'services.project-vm.featureDefinitions.My Feature'
expect_fail "a feature definition of a wrong type" 'featureDefinitions.x = 3;' 'services.project-vm.featureDefinitions.x'
expect_fail "a relative key file" 'tailscaleAuthKeyFile = "key.txt";' 'services.project-vm.tailscaleAuthKeyFile'
expect_fail "an unknown accel" 'accel = "hvf";' 'services.project-vm.accel'
expect_fail "an unknown network kind" 'network = { wifi = "x"; };' 'services.project-vm.network'
expect_fail "a bad image checksum" 'images.x = { url = "https://h/x.qcow2"; checksum = "md5:00"; };' 'services.project-vm.images.x.checksum'
expect_fail "an image name with a slash" 'baseImage = "a b";' 'services.project-vm.baseImage'
expect_fail "a bad PCI address" 'vms.web.hostdevs = [ "1:2:3" ];' 'services.project-vm.vms.web.hostdevs'
expect_fail "an unknown firmware" 'vms.web.firmware = "uefi";' 'services.project-vm.vms.web.firmware'
expect_fail "an address without a prefix" 'vms.web.networkConfig.address = "10.0.0.5";' 'services.project-vm.vms.web.networkConfig.address'
expect_fail "a relative share source" 'vms.web.shares = [ { source = "data"; target = "/mnt/data"; } ];' 'services.project-vm.vms.web.shares'
expect_fail "a suspend timeout of 0" 'suspendOnShutdown = true; suspendTimeout = 0;' 'services.project-vm.suspendTimeout'
expect_fail "port 0" 'vms.web.ports = [ { host = 0; guest = 80; } ];' 'services.project-vm.vms.web.ports'
expect_fail "an unknown port protocol" 'vms.web.ports = [ { host = 8080; guest = 80; protocol = "sctp"; } ];' 'services.project-vm.vms.web.ports'
expect_fail "an unknown VM option" 'vms.web.memroy = "1G";' 'services.project-vm.vms.web.memroy'
[[ $fails -eq 0 ]] || exit 1
