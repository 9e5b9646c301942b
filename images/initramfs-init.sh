#!/bin/busybox sh
# /init of the tmem guest initramfs: load the virtio and ext4 modules, mount the root disk
# and switch_root into it. Honours root=, rootflags= and init= on the kernel command line.

/bin/busybox --install -s /bin
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

for module in /modules/*.ko; do
    insmod "$module" || echo "initramfs: insmod $module failed"
done

root=/dev/vda
rootflags=rw
init=/sbin/init
for word in $(cat /proc/cmdline); do
    case "$word" in
        root=*) root=${word#root=} ;;
        rootflags=*) rootflags=${word#rootflags=} ;;
        init=*) init=${word#init=} ;;
    esac
done

# The disk appears once virtio_blk has probed it; wait up to 10 s.
tries=0
while [ ! -b "$root" ] && [ "$tries" -lt 100 ]; do
    sleep 0.1
    tries=$((tries + 1))
done

if ! mount -t ext4 -o "$rootflags" "$root" /newroot; then
    # Fail fast: QEMU exits and the harness shows this console tail instead of timing out.
    echo "initramfs: cannot mount $root (modules loaded: $(ls /modules | tr '\n' ' ')); power off"
    poweroff -f
fi

umount /dev /sys /proc
exec switch_root /newroot "$init"
