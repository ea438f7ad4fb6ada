# project-vm: seal a copy of a VM's root disk as a template (`image save`).
# Runs as root in a throwaway boot of the copy, never in the VM itself, and
# removes what makes a machine this machine, so that each VM made from the
# template is a new machine: cloud-init's instance state (the next boot finds
# its own seed and runs as a new instance), the machine-id, the ssh host keys,
# the authorized keys the seed installed, shell history, and logs and network
# config that name the old VM. Then it powers the copy off.
set -u
rm -rf /var/lib/cloud/instances /var/lib/cloud/instance /var/lib/cloud/data /var/lib/cloud/sem
# The readiness reporter's record of this instance's first boot.
rm -rf /var/lib/project-vm
rm -f /var/log/cloud-init.log /var/log/cloud-init-output.log
# The next boot must look for a new seed rather than trust this instance.
rm -f /etc/cloud/cloud.cfg.d/90-project-vm.cfg
rm -f /etc/ssh/ssh_host_*
truncate -s 0 /etc/machine-id
rm -f /var/lib/dbus/machine-id
for home in /root /home/*; do
  rm -f "$home/.ssh/authorized_keys" "$home/.bash_history" "$home/.lesshst" "$home/.viminfo"
done
rm -f /etc/netplan/50-cloud-init.yaml /etc/network/interfaces.d/50-cloud-init
journalctl --rotate >/dev/null 2>&1; journalctl --vacuum-time=1s >/dev/null 2>&1
rm -rf /var/log/journal/*
sync
# Let ssh return before the power goes.
nohup sh -c 'sleep 1; systemctl poweroff' >/dev/null 2>&1 &
