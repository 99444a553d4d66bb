#!/bin/sh
# The PV guests' /init in the Xen-in-QEMU rig (busybox; see README.md here). It says hello
# on its console (xenconsoled logs it in dom0), uses a disk if it has one (xen-blkfront,
# /dev/xvda: writes a marker dom0 checks), then waits to be powered off.
#
# `xl shutdown` writes control/shutdown = poweroff; the guest kernel's watch on it runs
# /sbin/poweroff (orderly_poweroff), and busybox's poweroff asks pid 1 with SIGUSR2: this
# script is pid 1, so it traps that signal (and TERM, and USR1 for halt) and powers off.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
trap 'echo "XEN-RIG-GUEST poweroff requested"; sync; poweroff -f' USR1 USR2 TERM

echo "XEN-RIG-GUEST hello $(uname -r) up=$(cut -d' ' -f1 /proc/uptime)s"

# A vbd in the guest's xenstore directory shows up on the xen bus before any driver binds.
if ls /sys/bus/xen/devices/ 2>/dev/null | grep -q '^vbd-'; then
    insmod /lib/modules/xen-blkfront.ko || echo "XEN-RIG-GUEST insmod xen-blkfront failed"
    i=0
    while [ ! -b /dev/xvda ] && [ $i -lt 300 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    if [ -b /dev/xvda ]; then
        sectors=$(cat /sys/block/xvda/size)
        printf 'xen-rig-vbd' | dd of=/dev/xvda bs=512 count=1 conv=sync,fsync 2>/dev/null
        sync
        back=$(dd if=/dev/xvda bs=11 count=1 2>/dev/null)
        if [ "$back" = xen-rig-vbd ]; then
            echo "XEN-RIG-GUEST xvda written: $sectors sectors"
        else
            echo "XEN-RIG-GUEST xvda read back '$back'"
        fi
    else
        echo "XEN-RIG-GUEST no /dev/xvda after 30 s"
    fi
fi

# Signals interrupt `wait`, not a foreground sleep: sleep in the background.
while :; do
    sleep 60 &
    wait $!
done
