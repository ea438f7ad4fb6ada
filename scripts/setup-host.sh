#!/usr/bin/env bash
# Prepare a Debian 12 (bookworm) host to run project-vm and its tests:
# libvirt + QEMU from bookworm-backports, the tools the tests use, and the
# daemons started (by hand when there is no systemd, as in containers/CI).
#
# The backports mirror is derived from the machine's existing apt sources, so
# the script works unchanged behind local mirrors and snapshots.
set -euo pipefail

[[ $EUID -eq 0 ]] || { echo "setup-host.sh: run as root (it installs packages and starts libvirtd)" >&2; exit 1; }

. /etc/os-release
codename=${VERSION_CODENAME:-bookworm}

if [[ $ID == debian ]]; then
  backports=/etc/apt/sources.list.d/project-vm-backports.sources
  if [[ ! -e $backports ]]; then
    uri=$("$(dirname "$0")/apt-mirror.sh" "$codename") || { echo "setup-host.sh: no Debian $codename entry in the apt sources to derive a mirror from" >&2; exit 1; }
    cat >"$backports" <<SRC
Types: deb
URIs: $uri
Suites: $codename-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  fi
  target=(-t "$codename-backports")
else
  target=()
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Host stack.
apt-get install -y -qq --no-install-recommends "${target[@]}" \
  libvirt-daemon-system libvirt-clients libvirt-dev qemu-system-x86 qemu-utils passt libvirt-l10n >/dev/null
# A locale libvirt translates into (tests/daemons.rs runs a daemon that speaks
# German: project-vm must decide the same in every language).
apt-get install -y -qq --no-install-recommends locales >/dev/null
if ! locale -a 2>/dev/null | grep -qi '^de_DE\.utf-\?8$'; then
  grep -q '^de_DE.UTF-8 UTF-8' /etc/locale.gen 2>/dev/null || echo 'de_DE.UTF-8 UTF-8' >>/etc/locale.gen
  locale-gen >/dev/null
fi
# OVMF for UEFI guests (firmware: efi), from the release itself.
apt-get install -y -qq --no-install-recommends ovmf >/dev/null
# Build and test tools: pkg-config for the virt crate, xorriso to read the seed
# ISO back, debootstrap/extlinux/fdisk/e2fsprogs to build the test guest image,
# openssh for the guest ssh and the qemu+ssh:// test.
apt-get install -y -qq --no-install-recommends \
  pkg-config xorriso debootstrap extlinux syslinux-common fdisk e2fsprogs \
  openssh-client openssh-server libxml2-utils iproute2 procps nix-bin >/dev/null
# What the test preparation needs, installed here so that its parallel steps
# never contend for apt's lock: the libraries the unpacked cloud-init
# validators import, and the build dependencies of virtiofsd (Debian 12 has no
# package for it; scripts/install-virtiofsd.sh builds it).
apt-get install -y -qq --no-install-recommends \
  python3-yaml python3-jinja2 python3-jsonschema python3-configobj python3-requests python3-jsonpatch \
  libseccomp-dev libcap-ng-dev >/dev/null

start_daemons() {
  if [[ -d /run/systemd/system ]]; then
    systemctl start virtlogd.socket libvirtd.socket libvirtd.service
    return
  fi
  mkdir -p /run/libvirt
  pgrep -x virtlogd >/dev/null || virtlogd -d
  pgrep -x libvirtd >/dev/null || libvirtd -d
  for _ in $(seq 50); do
    virsh -c qemu:///system version >/dev/null 2>&1 && return
    sleep 0.2
  done
  echo "setup-host.sh: libvirtd did not answer on qemu:///system" >&2
  return 1
}
start_daemons
virsh -c qemu:///system version

# A second, separate libvirt daemon for the fleet tests (tests/fleet.rs): the
# session daemon of a dedicated user. (root's own qemu:///session is served
# by the system daemon itself, with the same domains and pools.) It answers
# on a fixed socket that root reaches with
# qemu+unix:///session?socket=/run/project-vm-fleet/libvirt/libvirt-sock
start_second_daemon() {
  id pvfleet >/dev/null 2>&1 ||
    useradd --system --create-home --home-dir /var/lib/pvfleet --shell /usr/sbin/nologin pvfleet
  install -d -o pvfleet -g pvfleet -m 0700 /run/project-vm-fleet
  install -d -o pvfleet -g pvfleet -m 0755 /var/lib/pvfleet /var/lib/pvfleet/pools
  local uri="qemu+unix:///session?socket=/run/project-vm-fleet/libvirt/libvirt-sock"
  virsh -c "$uri" version >/dev/null 2>&1 && return
  runuser -u pvfleet -- env HOME=/var/lib/pvfleet XDG_RUNTIME_DIR=/run/project-vm-fleet libvirtd -d
  for _ in $(seq 50); do
    virsh -c "$uri" version >/dev/null 2>&1 && return
    sleep 0.2
  done
  echo "setup-host.sh: the second libvirt daemon (user pvfleet) did not answer on $uri" >&2
  return 1
}
start_second_daemon
