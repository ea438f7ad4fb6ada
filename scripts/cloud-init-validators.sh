#!/usr/bin/env bash
# Makes cloud-init's own schema validator runnable on this (bookworm) host for
# each Debian suite the project supports, without installing cloud-init:
#
#   bookworm  cloud-init 22.4
#   trixie    cloud-init 25.x
#
# For each suite it downloads that suite's cloud-init .deb through apt with a
# private configuration (its own sources list naming the mirror from this
# machine's apt sources and the suite, signed by Debian's archive keyring, its
# own lists and archives in a scratch directory), unpacks it with dpkg-deb -x
# under
# $PROJECT_VM_VALIDATOR_CACHE (default /var/cache/project-vm/validators)/cloud-init-<suite>/
# and writes an executable wrapper `cloud-init` beside it that runs that
# cloud-init's CLI with the host's /usr/bin/python3 and the unpacked
# dist-packages first on PYTHONPATH:
#
#   WRAPPER --version
#   WRAPPER schema -c user-data.yaml
#   WRAPPER schema -c network-config.yaml --schema-type network-config
#
# cloud-init 22.4 has no network-config schema: it rejects --schema-type
# (argparse usage error, exit 2). It prints "Valid cloud-config: FILE" where
# 25.x prints "Valid schema FILE"; both exit 1 on schema errors.
#
# The Python libraries cloud-init imports come from the host's own Debian
# packages (installed here when missing). Each suite's unpacked copy is cached
# and reused while this script is unchanged.
#
# Prints the wrappers' paths, one per line, on stdout; logs go to stderr.
# Exits non-zero, saying why, when a wrapper cannot be made or does not run.
# Needs root (apt-get install, the cache under /var/cache).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${PROJECT_VM_VALIDATOR_CACHE:-/var/cache/project-vm/validators}
suites=(bookworm trixie)
# What the unpacked cloud-inits import for `schema` (found with python3 -X
# importtime on both, for cloud-config and network-config): a subset of
# cloud-init's Depends. Both suites run on bookworm's Python 3.11 with these
# bookworm packages; nothing from trixie is needed beyond cloud-init itself.
host_libs=(python3-yaml python3-jinja2 python3-jsonschema python3-configobj python3-requests python3-jsonpatch)
python=/usr/bin/python3
key=$(sha256sum "$0" | cut -c1-12)

log() { echo "[cloud-init-validators] $*" >&2; }
die() { echo "cloud-init-validators.sh: $*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "run as root (apt-get install and $cache)"
for tool in apt-get dpkg-deb dpkg-query "$python"; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[[ -r $keyring ]] || die "$keyring is missing (apt-get install debian-archive-keyring)"

missing=()
for p in "${host_libs[@]}"; do
  [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) == installed ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  out=$(DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" 2>&1) ||
    { echo "$out" | tail -20 >&2; die "could not install ${missing[*]}"; }
fi

# The machine's sources name bookworm only; the same archive serves trixie.
mirror=$("$here/apt-mirror.sh" bookworm) || die "no Debian mirror in this machine's apt sources"
mkdir -p "$cache"
tmp=
trap '[[ -z $tmp ]] || rm -rf "$tmp"' EXIT

# fetch SUITE APTDIR DEST: downloads SUITE's cloud-init .deb into DEST, with
# apt's state for it in APTDIR.
fetch() {
  local suite=$1 apt=$2 dest=$3
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$dest"
  echo "deb [signed-by=$keyring] $mirror $suite main" >"$apt/sources.list"
  local opts=(
    -o "Dir::Etc::SourceList=$apt/sources.list"
    -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$apt/lists"
    -o "Dir::Cache=$apt/cache"
    -o Dir::State::status=/dev/null
    -o Dir::Etc::Preferences=/dev/null
    -o Dir::Etc::PreferencesParts=/dev/null
    -o APT::Sandbox::User=root
    -o Acquire::Languages=none
  )
  # Only the Packages index: no AppStream, Contents or translations.
  local target
  for target in DEP-11 DEP-11-icons DEP-11-icons-small DEP-11-icons-hidpi Contents-deb Contents-udeb; do
    opts+=(-o "Acquire::IndexTargets::deb::$target::DefaultEnabled=false")
  done
  apt-get "${opts[@]}" -q update >&2 || return 1
  (cd "$dest" && apt-get "${opts[@]}" -q download cloud-init >&2) || return 1
}

# make SUITE: prints the wrapper's path once it answers --version.
make_validator() {
  local suite=$1 dir=$cache/cloud-init-$suite
  local wrapper=$dir/cloud-init
  if [[ -x $wrapper && $(cat "$dir/.made-by" 2>/dev/null) == "$key" ]] && "$wrapper" --version >/dev/null 2>&1; then
    log "$suite: cached $("$wrapper" --version 2>&1)"
    echo "$wrapper"
    return 0
  fi
  tmp=$cache/.cloud-init-$suite.$$
  rm -rf "$tmp"
  log "$suite: downloading cloud-init from $mirror"
  fetch "$suite" "$tmp/apt" "$tmp/deb" || die "$suite: could not download cloud-init"
  local deb
  deb=$(ls "$tmp"/deb/cloud-init_*.deb 2>/dev/null | head -1)
  [[ -n $deb ]] || die "$suite: apt-get download left no cloud-init .deb"
  log "$suite: unpacking $(basename "$deb")"
  mkdir -p "$tmp/root"
  dpkg-deb -x "$deb" "$tmp/root" || die "$suite: dpkg-deb -x $deb failed"
  [[ -d $tmp/root/usr/lib/python3/dist-packages/cloudinit ]] ||
    die "$suite: $(basename "$deb") has no usr/lib/python3/dist-packages/cloudinit"
  cat >"$tmp/root/cloud-init" <<WRAP
#!/bin/sh
# cloud-init from Debian $suite ($(basename "$deb")), unpacked, not installed,
# by project-vm's scripts/cloud-init-validators.sh: runs its CLI (the
# package's console_scripts entry point) with the host's python3, the
# unpacked modules first, no user site-packages, nothing from the cwd.
here=\$(dirname "\$(readlink -f "\$0")")
PYTHONPATH=\$here/usr/lib/python3/dist-packages PYTHONNOUSERSITE=1 exec $python -s -P -c '
import sys
from cloudinit.cmd.main import main
sys.argv[0] = "cloud-init"
sys.exit(main())
' "\$@"
WRAP
  chmod 755 "$tmp/root/cloud-init"
  # The wrapper finds its modules beside itself: try it before it replaces
  # the cached one.
  local version
  version=$("$tmp/root/cloud-init" --version 2>&1) || die "$suite: cloud-init --version fails on this host: $version"
  echo "$key" >"$tmp/root/.made-by"
  rm -rf "$dir"
  mv "$tmp/root" "$dir"
  rm -rf "$tmp"
  tmp=
  log "$suite: made $wrapper ($version)"
  echo "$wrapper"
}

for suite in "${suites[@]}"; do
  make_validator "$suite"
done
