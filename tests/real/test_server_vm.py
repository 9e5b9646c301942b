"""The guest side for real: the stdlib transport inside a TCG guest, over virtio-serial.

QEMU connects the VM's port to a live ``tmemd serve``, on the socket the daemon made for the
VM when it was admitted (``ChannelSpec`` mode "connect"). In the guest, an agent says hello
with the kernel's boot id, stores pages in a persistent pool, reads them back, then dies in
the middle of a frame. A second agent on the same port (the
host end of the stream still holds the partial frame, which swallows its first hellos) must
get through once the daemon drops the stale frame, be told "resumed", and read every page
back byte for byte.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.daemon import DaemonUnderTest, running_daemon

from tmemh.image.manifest import ImageManifest
from tmemh.vm import ChannelSpec, VirtualMachine, VMSpec

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(os.geteuid() != 0, reason="guest image and VMs need root")]

PORT = "org.tmem.wiretest"  # not org.tmem.0: the image would start its own agent there

GUEST_PROBE = r'''
import glob, hashlib, json, os, sys
from tmem_agent.channel import wire
from tmem_agent.channel.transport import Transport

PORT = sys.argv[2]
device = next("/dev/" + p.split("/")[-1] for p in glob.glob("/sys/class/virtio-ports/*")
              if open(p + "/name").read().strip() == PORT)
boot_id = bytes.fromhex(open("/proc/sys/kernel/random/boot_id").read().strip().replace("-", ""))
pages = [(hashlib.sha256(b"%d" % i).hexdigest().encode() * 64)[:4096] for i in range(256)]
keys = [((i // 64, 7, 0), i) for i in range(256)]
agent = Transport.device(device).open()
reply = agent.hello("wire-vm", boot_id, os.urandom(16), timeout=30)
out = {"status": reply.status.name, "pools": [p.pool_id for p in reply.pools],
       "device": device}
if sys.argv[1] == "first":
    pool = agent.new_pool(1)
    ids = [agent.submit(wire.Op.PUT_BATCH, wire.batch_request(pool, keys[i:i + 64],
                                                              pages[i:i + 64]))
           for i in range(0, 256, 64)]
    out["stored"] = sum(sum(wire.parse_flags_reply(agent.result(r), 64)) for r in ids)
    out["pool"] = pool
else:
    pool = reply.pools[0].pool_id
out["intact"] = all(agent.get_batch(pool, keys[i:i + 64]) == pages[i:i + 64]
                    for i in range(0, 256, 64))
if sys.argv[1] == "first":
    # Die in the middle of a frame: the host end of the port keeps the partial bytes.
    torn = wire.encode_frame(wire.Op.PUT, 1, wire.key_request(pool, (9, 9, 9), 9, pages[0]))
    agent.close()
    port = os.open(device, os.O_WRONLY)
    os.write(port, torn[:1500])
print(json.dumps(out))
sys.stdout.flush()
os._exit(0)
'''


@contextmanager
def _log_on_failure(daemon: DaemonUnderTest) -> Iterator[None]:
    try:
        yield
    except BaseException:
        print(f"daemon log:\n{daemon.tail(60)}")
        raise


def test_agent_over_virtio_serial_resumes_after_dying_mid_frame(
    guest_image: ImageManifest, vm_state: Path, tmp_path: Path
) -> None:
    with running_daemon("--stall-timeout", "2") as daemon:
        spec = VMSpec(name="wire-vm", memory_mib=256,
                      channels=(ChannelSpec(PORT, daemon.admit("wire-vm"), "connect"),))
        probe = tmp_path / "probe.py"
        probe.write_text(GUEST_PROBE)
        with VirtualMachine(spec, guest_image, backend="qemu", state_dir=vm_state) as vm, \
                _log_on_failure(daemon):
            vm.ssh().put(probe, "/tmp/probe.py")
            run = "PYTHONPATH=/opt/tmem-agent python3 /tmp/probe.py {} " + PORT
            first = json.loads(vm.run(run.format("first"), check=True, timeout=180).stdout)
            assert first["status"] == "FRESH" and first["stored"] == 256 and first["intact"]
            second = json.loads(vm.run(run.format("second"), check=True, timeout=180).stdout)
            assert second["status"] == "RESUMED" and second["pools"] == [first["pool"]]
            assert second["intact"]
        log = daemon.log_text()
        assert "TIMEOUT: partial frame stalled" in log  # the torn frame, then resync
        assert daemon.alive()
