# project-vm: give the project disk a filesystem on its first boot, and never
# again. Runs as a cloud-init bootcmd on every boot, before the mounts module.
# It formats only when a low-level probe finds no signature of any kind on the
# device (no filesystem, no partition table, no RAID or LVM member): a disk
# reattached after `destroy --keep-data` is left exactly as it is.
# (cloud-init's own fs_setup is not used: with partition "none" it does not
# check for an existing filesystem and forces mkfs.)
dev=@DEVICE@
i=0
while [ ! -b "$dev" ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
[ -b "$dev" ] || exit 0
blkid -p "$dev" >/dev/null 2>&1
case $? in
  2) mkfs.ext4 -q -L @LABEL@ "$dev" ;;  # nothing on it: a new disk
  *) : ;;                                # something (or a probe error): hands off
esac
