#!/usr/bin/env bash
# The Nix checks that can run on a machine without a binary cache or nixpkgs
# (see README, "What runs where"). Needs nix (Debian: nix-bin).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nix-instantiate >/dev/null || { echo "check-nix.sh: nix is not installed (apt install nix-bin)" >&2; exit 1; }
n=0
while IFS= read -r f; do
  nix-instantiate --parse "$f" >/dev/null
  n=$((n + 1))
done < <(git ls-files '*.nix')
echo "ok: nix-instantiate --parse on $n files"
tests/nix/flake-offline.sh
tests/nix/module-eval.sh
