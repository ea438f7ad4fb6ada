#!/usr/bin/env bash
# Builds an end-to-end test guest: a small Debian cloud image that boots from
# its own disk (extlinux in the MBR, as real cloud images do), with cloud-init
# (NoCloud), openssh-server, sudo, locales, dbus (logind acts on the ACPI power
# button), cloud-guest-utils (growpart) and e2fsprogs. Packages come from the
# mirror in this machine's apt sources.
#
#   tests/images/build-debian.sh [bookworm|trixie]     (default: bookworm)
#
# bookworm: cloud-init 22.4, eth0 through ifupdown + isc-dhcp-client, and
#           qemu-guest-agent.
# trixie:   cloud-init 25.x, shaped like Debian's genericcloud image:
#           systemd-networkd configured through netplan (cloud-init renders
#           the seed's network-config to netplan on first boot and netplan's
#           generator enables systemd-networkd), systemd-resolved, no guest
#           agent, no ifupdown. The image carries no network config of its own.
#
# Output: a compressed qcow2 at $PROJECT_VM_IMAGE_CACHE (default
# /var/cache/project-vm/test-images)/debian-<suite>-<hash>.qcow2, keyed by a
# hash of this script, so an edit rebuilds and an unchanged script reuses the
# cached file; a new build deletes the older builds of its own suite. Prints
# the path on stdout, logs on stderr. Needs root (debootstrap, loop mount).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${PROJECT_VM_IMAGE_CACHE:-/var/cache/project-vm/test-images}
suite=${1:-bookworm}
case $suite in
  bookworm | trixie) ;;
  *) echo "usage: build-debian.sh [bookworm|trixie]" >&2; exit 2 ;;
esac
key=$(sha256sum "$0" | cut -c1-12)
out=$cache/debian-$suite-$key.qcow2
if [[ -s $out ]]; then
  echo "$out"
  exit 0
fi
[[ $EUID -eq 0 ]] || { echo "build-debian.sh: run as root (debootstrap and a loop mount)" >&2; exit 1; }
for tool in debootstrap sfdisk losetup mkfs.ext4 extlinux qemu-img; do
  command -v "$tool" >/dev/null || { echo "build-debian.sh: $tool is missing (run scripts/setup-host.sh)" >&2; exit 1; }
done
# The machine's sources name bookworm only; the same archive serves trixie.
mirror=$("$here/../../scripts/apt-mirror.sh" bookworm)
mkdir -p "$cache"
work=$(mktemp -d /var/tmp/project-vm-image.XXXXXX)
mnt=$work/mnt
loop=
cleanup() {
  set +e
  mountpoint -q "$mnt" && umount -R "$mnt"
  [[ -n $loop ]] && losetup -d "$loop"
  rm -rf "$work"
}
trap cleanup EXIT
t0=$SECONDS
log() { echo "[build-debian $suite $((SECONDS - t0))s] $*" >&2; }

rootfs=$work/rootfs
# dbus: systemd-logind needs it to act on the ACPI power button (graceful stop).
# python3-cffi-backend: debootstrap does not resolve virtual packages, and
# python3-cryptography (cloud-init -> python3-oauthlib) needs one that only it
# provides, in both suites. (trixie's python3-netplan happens to name it too.)
# locales: cloud-init's locale module fails without.
common=dbus,python3-cffi-backend,linux-image-cloud-amd64,systemd-sysv,cloud-init,cloud-guest-utils,openssh-server,netbase,udev,kmod,sudo,locales,e2fsprogs,fdisk
case $suite in
  bookworm) include=$common,qemu-guest-agent,ifupdown,isc-dhcp-client ;;
  # As genericcloud: netplan.io for systemd-networkd, systemd-resolved with its
  # NSS modules, libpam-systemd so ssh sessions register with logind.
  trixie) include=$common,netplan.io,systemd-resolved,libnss-resolve,libnss-myhostname,libpam-systemd ;;
esac
log "debootstrap $suite from $mirror"
debootstrap --variant=minbase --include="$include" \
  "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || { tail -30 "$work/debootstrap.log" >&2; exit 1; }

log "configuring"
echo "localhost" >"$rootfs/etc/hostname"
cat >"$rootfs/etc/fstab" <<FSTAB
LABEL=root / ext4 defaults,discard 0 1
FSTAB
case $suite in
  bookworm)
    # cloud-init writes eth0's stanza to interfaces.d on first boot.
    cat >"$rootfs/etc/network/interfaces" <<NET
auto lo
iface lo inet loopback
source /etc/network/interfaces.d/*
NET
    ;;
  trixie)
    # cloud-init renders network-config to /etc/netplan on first boot, runs
    # netplan generate, and netplan's generator enables systemd-networkd for
    # what it wrote. Nothing static here, as in genericcloud.
    rm -rf "$rootfs/etc/network/interfaces" "$rootfs/etc/network/interfaces.d"
    rm -f "$rootfs"/etc/netplan/*
    chroot "$rootfs" systemctl enable systemd-resolved.service >/dev/null 2>&1
    ln -sfn ../run/systemd/resolve/stub-resolv.conf "$rootfs/etc/resolv.conf"
    ;;
esac
# cloud-init keeps the configuration its package ships (Debian's full
# datasource_list, ds-identify's default policy), as in Debian's cloud images:
# no override here may hide what users' images do on a later boot.
echo "en_US.UTF-8 UTF-8" >"$rootfs/etc/locale.gen"
chroot "$rootfs" locale-gen >/dev/null
# Fresh identity on first boot.
: >"$rootfs/etc/machine-id"
rm -f "$rootfs"/etc/ssh/ssh_host_* "$rootfs/var/lib/dbus/machine-id"
rm -rf "$rootfs/var/lib/cloud"/* "$rootfs/var/cache/apt"/*.bin "$rootfs/var/lib/apt/lists"/*
chroot "$rootfs" apt-get clean
kernel=$(basename "$(ls "$rootfs"/boot/vmlinuz-* | sort -V | tail -1)")
initrd=initrd.img-${kernel#vmlinuz-}
mkdir -p "$rootfs/boot/extlinux"
cat >"$rootfs/boot/extlinux/extlinux.conf" <<BOOT
DEFAULT debian
TIMEOUT 0
PROMPT 0
LABEL debian
  LINUX /boot/$kernel
  INITRD /boot/$initrd
  APPEND root=LABEL=root ro console=ttyS0,115200 net.ifnames=0 quiet
BOOT

log "making the disk"
raw=$work/disk.raw
truncate -s 2G "$raw"
echo 'start=2048, type=83, bootable' | sfdisk -q "$raw"
# losetup -P makes no partition nodes in containers: map the partition by offset.
part_bytes=$(( $(stat -c %s "$raw") - 1048576 ))
loop=$(losetup -f --show -o 1048576 --sizelimit "$part_bytes" "$raw")
mkfs.ext4 -q -L root "$loop"
mkdir -p "$mnt"
mount "$loop" "$mnt"
cp -a "$rootfs"/. "$mnt"/
extlinux --install "$mnt/boot/extlinux" >/dev/null 2>&1
umount "$mnt"
losetup -d "$loop"
loop=
dd if=/usr/lib/EXTLINUX/mbr.bin of="$raw" bs=440 count=1 conv=notrunc status=none

log "compressing"
qemu-img convert -c -O qcow2 "$raw" "$work/image.qcow2"
mv "$work/image.qcow2" "$out.tmp" && mv "$out.tmp" "$out"
# Older builds of the script are stale now.
find "$cache" -maxdepth 1 -name "debian-$suite-*.qcow2" ! -name "$(basename "$out")" -delete
log "done: $out ($(du -h "$out" | cut -f1))"
echo "$out"
