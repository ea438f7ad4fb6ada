#!/usr/bin/env bash
# Offline checks of the flake with Debian's nix (no binary cache, no nixpkgs):
#  - `nix flake metadata` and `nix eval .#nixosModules.default` with the committed lock;
#  - `nix flake show` with nixpkgs overridden by a stand-in built on a real
#    nixpkgs lib (NIXPKGS_LIB), since showing packages needs nixpkgs' source.
set -euo pipefail
cd "$(dirname "$0")/../.."
export NIX_CONFIG=$'experimental-features = nix-command flakes\nsubstituters ='

nix flake metadata >/dev/null
echo "ok: nix flake metadata (lock: $(nix flake metadata --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["locks"]["nodes"]["nixpkgs"]["locked"]["rev"])'))"
[[ $(nix eval .#nixosModules.default 2>/dev/null) == "<LAMBDA>" ]] || { echo "nix eval .#nixosModules.default failed" >&2; exit 1; }
echo "ok: nix eval .#nixosModules.default (offline, committed lock)"

if [[ -z ${NIXPKGS_LIB:-} ]]; then
  echo "skipped: nix flake show (set NIXPKGS_LIB to a nixpkgs lib checkout; with a binary cache run it plainly)"
  exit 0
fi
stub=$(mktemp -d)
trap 'rm -rf "$stub"' EXIT
cp -r "$NIXPKGS_LIB/lib" "$stub/lib"
cp tests/nix/stub-nixpkgs.nix "$stub/stub.nix"
cat >"$stub/flake.nix" <<'NIX'
{ outputs = { self }: import ./stub.nix (import ./lib); }
NIX
out=$(nix flake show --override-input nixpkgs "path:$stub" 2>&1)
for want in "packages" "project-vm-0.1.0" "apps" "checks" "nixos-test-project-vm" "devShells" "nixosModules" "overlays"; do
  grep -q "$want" <<<"$out" || { echo "nix flake show: no $want in:" >&2; echo "$out" >&2; exit 1; }
done
echo "ok: nix flake show (nixpkgs stood in by $NIXPKGS_LIB)"
