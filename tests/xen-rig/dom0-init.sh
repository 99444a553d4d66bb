#!/bin/sh
# dom0's /init in the Xen-in-QEMU rig (`cargo xtask xen-rig`, see README.md here): mounts
# what a dom0 needs, loads the Xen modules, runs the scenarios (scenarios.sh) and powers off.
# The last line dom0 prints is `XEN-RIG-END passed=N failed=M`; the host counts a boot
# without it as failed.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/xen-4.17/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
# What udev would have made (the hotplug scripts' locking stats /dev/stdin).
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout
ln -s /proc/self/fd/2 /dev/stderr
# What systemd-tmpfiles and the distribution's init scripts would have made.
mkdir -p /run/xen /run/xenstored /run/xen-hotplug /run/lock /var/log/xen/console \
    /var/lib/xen /var/lib/xenstored
echo "=== [$(cut -d' ' -f1 /proc/uptime)s] dom0 up, kernel $(uname -r)"
# A syslog daemon, as a host has one: a forked xenstored logs there.
syslogd -O /var/log/messages

# xenfs needs xen-privcmd; blkback and loop serve the guests' file-backed disks.
for m in xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs xen-blkback loop; do
    insmod "/lib/modules/$m.ko" || echo "XEN-RIG-INFO insmod $m failed"
done
mount -t xenfs xenfs /proc/xen
echo "=== [$(cut -d' ' -f1 /proc/uptime)s] xenfs: $(cat /proc/xen/capabilities)"

/bin/bash /usr/lib/xen-rig/scenarios.sh
echo "=== [$(cut -d' ' -f1 /proc/uptime)s] scenarios done (status $?)"
sync
poweroff -f
