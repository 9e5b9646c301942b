#!/bin/sh
# /sbin/init-tmem: a fast init for tmem test guests (kernel init=/sbin/init-tmem), no systemd.
# Mounts the pseudo file systems, configures the QEMU user-mode network statically, starts
# sshd and the tmem agent, prints TMEM-GUEST-READY on the console and then reaps orphans forever.

PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o nosuid,noexec,gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o nosuid,nodev tmpfs /dev/shm
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
mount -o remount,rw /

# sshd blocks until the kernel's random pool is seeded (~2 s under TCG without help); a
# virtio-rng device (QEMU -device virtio-rng-pci) seeds it at once. No udev: load it here.
modprobe virtio_rng 2>/dev/null

hostname -F /etc/hostname

ip link set lo up
ip addr add 10.0.2.15/24 dev eth0
ip link set eth0 up
ip route add default via 10.0.2.2

# Best effort: not every experiment needs them.
modprobe nbd 2>/dev/null || echo "init-tmem: nbd module not loaded"
modprobe zram 2>/dev/null || echo "init-tmem: zram module not loaded"

# Keep a reserve so the swap path (agent, NBD, virtio-serial) can allocate under pressure.
echo 16384 > /proc/sys/vm/min_free_kbytes

mkdir -p /run/sshd
chmod 0755 /run/sshd
sshd_started=yes
/usr/sbin/sshd || sshd_started=no

agent_port=
for name_file in /sys/class/virtio-ports/*/name; do
    [ -f "$name_file" ] || continue
    if [ "$(cat "$name_file")" = org.tmem.0 ]; then
        agent_port=org.tmem.0
    fi
done
if [ -n "$agent_port" ] && [ -f /opt/tmem-agent/tmem_agent/service.py ]; then
    tmem-agent run --supervise --port-name "$agent_port" >/var/log/tmem-agent.log 2>&1 &
    agent_pid=$!
    echo "init-tmem: tmem-agent started on $agent_port"
    # Swap through tmem before READY: the agent writes /run/tmem-agent/ready once swapon is
    # done. Bounded (60 s), and over at once if the agent exits (the log says why).
    waited=0
    while [ ! -f /run/tmem-agent/ready ] && [ $waited -lt 600 ] \
            && kill -0 "$agent_pid" 2>/dev/null; do
        sleep 0.1
        waited=$((waited + 1))
    done
    if [ -f /run/tmem-agent/ready ] && grep -q '^/dev/nbd0 ' /proc/swaps; then
        echo "init-tmem: tmem swap active: $(cat /run/tmem-agent/ready)"
    else
        echo "init-tmem: tmem swap NOT active (see /var/log/tmem-agent.log)"
    fi
fi

if [ "$sshd_started" = yes ]; then
    echo TMEM-GUEST-READY
else
    echo "TMEM-GUEST-FAILED: sshd did not start"
fi

# PID 1 must reap orphans. dash's wait collects any child (wait3), so keep one child alive
# and wait on it forever.
while :; do
    sleep 3600 &
    wait
done
