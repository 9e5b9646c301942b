"""A supervisor takeover while the block cache is attached, in a real guest.

A 256 MiB TCG guest (one vCPU) whose image's init starts ``tmem-agent run --supervise`` with
the cache on (``tmem.cache_disk=/dev/vdb``): swap on /dev/nbd0 and ext4 on /dev/nbd1, both
served by the one agent over its one stream. A tree of files is written on the ext4 with
their checksums. Then, all at once in the guest, without SSH: an anonymous fill that makes
the guest swap (every page's CRC checked afterwards), a reader that re-reads the tree in passes
checking every file (its page cache dropped per file, so every pass reaches the device), and
a writer that overwrites a set of other files in place or by rename. Once swap-out is in full
flow and the reader is in the middle of a pass, the serving agent is SIGKILLed by its pid (the
lock file's). The supervisor's standby takes over both devices. Then: a new agent pid, swap
on /dev/nbd0 and the cache ready on /dev/nbd1; every file (the tree and the writer's last
generation) reads back right; every swapped page verifies; the new agent's cache started from
a fresh pool (its reads after the takeover missed) and a re-read afterwards hits; ``fsck.ext4
-f -n`` clean after unmount; no I/O error in the kernel log.

It found a fault: in one run of six the guest's swap stalled for about six minutes after an
otherwise quick takeover, until the kernel's dead-connection timeout. Three changes followed
(docs/block-cache.md, "A takeover with the cache attached") and 16 runs of 16 passed since;
the test still runs only on request (TMEMH_KNOWN_HANGS=1) until more runs back that up, so
that CI does not fail on it now and then.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from support.daemon import running_daemon
from support.swapguest import (
    PORT,
    agent_status,
    diagnosed,
    run_bounded,
    start_driver,
    wait_for_guest_file,
    wait_for_result,
    wait_for_standby,
    wait_for_swap,
)

from tmemh.image.manifest import ImageManifest
from tmemh.vm import ChannelSpec, DataDisk, DiskThrottle, VirtualMachine, VMSpec

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(os.geteuid() != 0, reason="guest image and VMs need root"),
              pytest.mark.skipif(not os.environ.get("TMEMH_KNOWN_HANGS"),
                                 reason="a stall after a takeover with the cache attached "
                                        "was seen (1 run in 6, before its mends); "
                                        "TMEMH_KNOWN_HANGS=1 runs it"),
              pytest.mark.timeout(900)]

VM_NAME = "cache-takeover-vm"
MiB = 1 << 20
MOUNT = "/mnt/data"
TREE_FILES, TREE_FILE_KIB = 192, 128  # 24 MiB re-read per pass
TREE_PAGES = TREE_FILES * TREE_FILE_KIB // 4
WRITER_FILES, WRITER_FILE_KIB = 24, 64
FILL_MIB = 320  # anonymous memory of a 256 MiB guest: ~150 MiB of it swaps out
KILL_AT_SWAPPED_MIB = 48
LOCK_FILE = "/var/lib/tmem-agent/swap-fallback.lock"  # the serving agent's pid

# Files of real page contents (pages of the guest's own files, each stamped with its file and
# page), and their sha256 in sha256sum's format (paths relative to the mount point).
MAKE_FILES = r'''
import hashlib, os, struct, sys
sys.path.insert(0, "/opt/tmem-agent")
from tmem_agent.tools.pagecheck import guest_pages
root, files, kib, sums = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
sources = list(guest_pages(1024))
with open(sums, "w") as out:
    for n in range(files):
        rel = f"tree/d{n % 8}/f{n:04d}"
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        data = bytearray()
        for p in range(kib // 4):
            page = bytearray(sources[(n * 31 + p * 7) % len(sources)])
            struct.pack_into("<QQ", page, (p * 64) % 4080, n, p)
            data += page
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
        out.write(f"{hashlib.sha256(data).hexdigest()}  {rel}\n")
'''

# Re-reads the files of a sums file in passes, each file read with its page cache dropped
# before and after (so every pass reads the device), until a pass that started after STOP
# existed is done. Progress ("PASS FILES") in PROGRESS; one JSON line at the end.
READER = r'''
import hashlib, json, os, sys, time
sums, progress, stop = sys.argv[1], sys.argv[2], sys.argv[3]
os.chdir(sys.argv[4])
entries = [line.rstrip("\n").split("  ", 1) for line in open(sums)]
passes = []
while True:
    after_stop = os.path.exists(stop)
    started, bad = time.monotonic(), []
    for n, (digest, path) in enumerate(entries):
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        h = hashlib.sha256()
        while True:
            chunk = os.read(fd, 1 << 17)
            if not chunk:
                break
            h.update(chunk)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        if h.hexdigest() != digest:
            bad.append(path)
        if n % 4 == 3:
            with open(progress + ".tmp", "w") as f:
                f.write(f"{len(passes)} {n + 1}\n")
            os.rename(progress + ".tmp", progress)
    passes.append({"files": len(entries), "bad": len(bad), "first_bad": bad[:5],
                   "s": round(time.monotonic() - started, 1), "after_stop": after_stop})
    if after_stop:
        break
print(json.dumps({"passes": passes, "bad": sum(p["bad"] for p in passes)}))
'''

# Overwrites its files again and again (even generations in place, odd ones as a new file
# renamed over the old), fsyncing every few files and dropping their page cache, until STOP
# exists; then the last generation's sums (sha256sum's format) and one JSON line.
WRITER = r'''
import hashlib, json, os, struct, sys
root, files, kib, sums, stop = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
                                sys.argv[5])
os.makedirs(os.path.join(root, "w"), exist_ok=True)
digests, gen, writes = {}, 0, 0
while True:
    for n in range(files):
        rel = f"w/f{n:03d}"
        data = bytearray(os.urandom(64)) * (kib * 16)  # 64 random bytes repeated: compresses
        struct.pack_into("<QQ", data, (gen * 64) % (len(data) - 16), n, gen)
        path = os.path.join(root, rel)
        if gen % 2 == 0 and os.path.exists(path):
            fd = os.open(path, os.O_WRONLY)
        else:
            fd = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data)
        if n % 4 == 3:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        if not (gen % 2 == 0 and os.path.exists(path)):
            os.rename(path + ".new", path)
        digests[rel] = hashlib.sha256(data).hexdigest()
        writes += 1
    gen += 1
    if os.path.exists(stop):
        break
os.sync()
with open(sums, "w") as out:
    out.writelines(f"{d}  {rel}\n" for rel, d in sorted(digests.items()))
print(json.dumps({"generations": gen, "writes": writes}))
'''

# The anonymous fill in the background with the reader and the writer; SIGKILL for the serving
# agent (its pid from the lock file) once the fill has swapped out KILL pages (or has ended)
# and the reader is inside a pass; then the reader finishes that pass and one more, the writer
# stops, the fill verifies. Nothing here needs SSH meanwhile.
DRIVER = r"""#!/bin/sh
swapped() {{ awk '$1 == "pswpout" {{ print $2 }}' /proc/vmstat; }}
base=$(swapped)
rm -f /tmp/stop-reading /tmp/stop-writing /tmp/reader.progress /tmp/killed
python3 /tmp/fill_verify.py {fill_mib} >/tmp/result.tmp 2>/tmp/result.err &
fill=$!
python3 /tmp/writer.py {mount} {wfiles} {wkib} /root/w.sums /tmp/stop-writing \
    >/tmp/writer.json 2>/tmp/writer.err &
writer=$!
python3 /tmp/reader.py /root/tree.sums /tmp/reader.progress /tmp/stop-reading {mount} \
    >/tmp/reader.json 2>/tmp/reader.err &
reader=$!
while [ $(( $(swapped) - base )) -lt {kill_pages} ] && kill -0 "$fill" 2>/dev/null; do
    sleep 0.5
done
# mid-pass: at least a few files into the pass, and not near its end
while :; do
    set -- $(cat /tmp/reader.progress 2>/dev/null || echo 0 0)
    [ "$2" -ge 8 ] && [ "$2" -le {late} ] && break
    kill -0 "$reader" 2>/dev/null || break
    sleep 0.2
done
agent=$(cat {lock})
kill -9 "$agent" && echo "killed $agent at reader pass/files $(cat /tmp/reader.progress)" \
    "swapped $(( $(swapped) - base ))" >/tmp/killed
touch /tmp/stop-reading
wait "$reader"
touch /tmp/stop-writing
wait
mv /tmp/result.tmp /tmp/result.json
"""


def cache_counters(vm: VirtualMachine) -> dict[str, Any]:
    """The serving agent's cache (status, counters)."""
    found: dict[str, Any] = agent_status(vm)["cache"]["cache"]
    return found


def test_takeover_with_the_cache_attached_keeps_files_and_swap_intact(
    guest_image: ImageManifest, vm_state: Path, tmp_path: Path
) -> None:
    with running_daemon("--memory-limit", "1G") as daemon:
        spec = VMSpec(name=VM_NAME, memory_mib=256,
                      kernel_args=(f"tmem.vm={VM_NAME}", "tmem.cache_disk=/dev/vdb"),
                      channels=(ChannelSpec(PORT, daemon.admit(VM_NAME), "connect"),),
                      data_disk=DataDisk(256, throttle=DiskThrottle(16 * MiB, 0)))
        with VirtualMachine(spec, guest_image, backend="qemu", state_dir=vm_state) as vm, \
                diagnosed(vm, daemon):
            booted = time.monotonic()
            ready = wait_for_swap(vm)
            assert ready.get("cache") == "ready", ready
            wait_for_standby(vm)
            first = int(vm.run(f"cat {LOCK_FILE}", timeout=60).stdout)
            print(f"\nswap and cache ready {time.monotonic() - booted:.0f} s after SSH: {ready}")

            for name, text in (("make_files.py", MAKE_FILES), ("reader.py", READER),
                               ("writer.py", WRITER)):
                (tmp_path / name).write_text(text)
                vm.ssh().put(tmp_path / name, f"/tmp/{name}")
            started = time.monotonic()
            vm.run(f"mkfs.ext4 -q /dev/nbd1 && mkdir -p {MOUNT} && mount /dev/nbd1 {MOUNT} && "
                   f"python3 /tmp/make_files.py {MOUNT} {TREE_FILES} {TREE_FILE_KIB} "
                   "/root/tree.sums && sync", timeout=600, check=True)
            print(f"tree of {TREE_FILES * TREE_FILE_KIB >> 10} MiB written in "
                  f"{time.monotonic() - started:.0f} s")
            before = cache_counters(vm)

            started = time.monotonic()
            start_driver(vm, tmp_path, DRIVER.format(
                fill_mib=FILL_MIB, kill_pages=KILL_AT_SWAPPED_MIB * 256, mount=MOUNT,
                wfiles=WRITER_FILES, wkib=WRITER_FILE_KIB, lock=LOCK_FILE,
                late=TREE_FILES * 3 // 4))
            fill = wait_for_result(vm)
            workload_s = time.monotonic() - started
            killed = wait_for_guest_file(vm, "/tmp/killed", 60).strip()
            reader = json.loads(wait_for_guest_file(vm, "/tmp/reader.json", 60))
            writer = json.loads(wait_for_guest_file(vm, "/tmp/writer.json", 60))

            # the standby took over both devices
            second = int(vm.run(f"cat {LOCK_FILE}", timeout=60).stdout)
            status = agent_status(vm)
            after_takeover = cache_counters(vm)
            ready_now = json.loads(vm.run("cat /run/tmem-agent/ready", timeout=60,
                                          check=True).stdout)
            swaps = vm.run("cat /proc/swaps", timeout=60).stdout
            takeovers = vm.run("grep -c 'standby: taking over' /var/log/tmem-agent.log",
                               timeout=60).stdout.strip()
            takeover_log = vm.run("grep -E 'died|taking over|gave /dev/nbd|READY|FAILED' "
                                  "/var/log/tmem-agent.log", timeout=60).stdout

            # every file right, read after a drop of the page cache: hits from the new pool
            started = time.monotonic()
            check = run_bounded(vm, f"echo 3 > /proc/sys/vm/drop_caches && cd {MOUNT} && "
                                "sha256sum --quiet -c /root/tree.sums /root/w.sums", 300)
            reread_s = time.monotonic() - started
            reread = cache_counters(vm)
            run_bounded(vm, f"umount {MOUNT}", 120)
            fsck = run_bounded(vm, "fsck.ext4 -f -n /dev/nbd1", 300)
            errors = vm.run("dmesg | grep -E 'I/O error|EXT4-fs (error|warning)|blocked for'",
                            timeout=60).stdout

            a, r = after_takeover["counters"], reread["counters"]
            hits, disk = r["hits"] - a["hits"], r["disk_reads"] - a["disk_reads"]
            print(json.dumps({
                "killed": killed, "agent_pids": [first, second], "workload_s": round(workload_s),
                "fill": {k: fill[k] for k in ("bad", "fill_s", "verify_s", "fill_pswpout",
                                              "verify_pswpin")},
                "reader": reader, "writer": writer,
                "cache_before": {k: before["counters"][k] for k in ("hits", "misses",
                                                                     "disk_reads")},
                "cache_after_takeover": {k: a[k] for k in ("hits", "misses", "disk_reads",
                                                           "puts_stored", "puts_refused",
                                                           "nbd_connections",
                                                           "stale_read_guards")}
                | {"pool_incarnation": after_takeover["pool_incarnation"],
                   "uptime_s": after_takeover["uptime_s"]},
                "reread": {"s": round(reread_s, 1), "hits": hits, "disk_reads": disk},
                "ready": ready_now}, indent=1))
            print(takeover_log)

            assert killed.startswith("killed") and second != first, (killed, first, second)
            assert takeovers == "1", takeovers  # the standby, not a fresh agent
            assert status["ready"] and status["swap_active"] and "/dev/nbd0 " in swaps
            assert ready_now.get("cache") == "ready" and after_takeover["ready"]
            assert after_takeover["tmem_connected"] and status["tmem_connected"]
            assert fill["bad"] == 0, f"pages with a wrong CRC: {fill['first_bad']}"
            assert fill["fill_pswpout"] > 0 and fill["verify_pswpin"] > 0
            assert status["counters"]["io_errors"] == 0
            assert reader["bad"] == 0, reader
            assert len(reader["passes"]) >= 2 and reader["passes"][-1]["after_stop"]
            assert writer["generations"] >= 1
            assert check.exit_code == 0, check.stdout + check.stderr
            # A fresh pool: most of the tree missed once after the takeover (the reader's last
            # pass read all of it), then the re-read hits. Pages zbud refuses (real file
            # pages that compress to more than half a page, ~1/6 of them) miss every time.
            assert a["misses"] > TREE_PAGES // 2 and a["disk_reads"] > 0, a
            assert hits > 3 * disk, (hits, disk)
            assert r["io_errors"] == 0 and r["nbd_errors"] == 0
            assert fsck.exit_code == 0, fsck.stdout + fsck.stderr
            assert errors == "", errors
