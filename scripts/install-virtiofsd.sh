#!/usr/bin/env bash
# Makes sure virtiofsd (the daemon libvirt runs for shared folders) is on
# this machine. Debian 13 and later ship it (`apt install virtiofsd`);
# Debian 12 does not, so it is built from crates.io into ~/.cargo/bin (about
# 3 minutes on 2 cores; `cargo install` skips a build it already has).
# Prints its path.
set -euo pipefail
for p in /usr/libexec/virtiofsd /usr/lib/qemu/virtiofsd "$HOME/.cargo/bin/virtiofsd"; do
  if [[ -x $p ]]; then
    echo "$p"
    exit 0
  fi
done
if apt-cache show virtiofsd >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends virtiofsd >&2
  [[ -x /usr/libexec/virtiofsd ]] && { echo /usr/libexec/virtiofsd; exit 0; }
fi
missing=()
for p in libseccomp-dev libcap-ng-dev; do
  dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing+=("$p")
done
if ((${#missing[@]})); then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
command -v cargo >/dev/null || { echo "install-virtiofsd.sh: cargo is needed to build virtiofsd here" >&2; exit 1; }
cargo install --locked --quiet virtiofsd >&2
echo "$HOME/.cargo/bin/virtiofsd"
