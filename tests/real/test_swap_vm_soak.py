"""A soak: a real guest fills more than its memory through tmem swap, verifies it, and does
it again, round after round, and never hangs.

Each round is a new process (the previous one's pages are freed, so the swap device sees
trims as well as writes and reads). On a hang the guest's blocked tasks are dumped through
the QEMU monitor and the test fails with them. What CI runs is short: two rounds of twice the
guest's memory (about 4 minutes under TCG). Set ``TMEMH_SOAK_SECONDS`` for the full soak:
rounds of three times the guest's memory for that long (two rounds took 313 s):

    TMEMH_SOAK_SECONDS=1200 ./run test tests/real/test_swap_vm_soak.py -s
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from support.daemon import running_daemon
from support.swapguest import (
    PORT,
    WORKLOAD_TIMEOUT,
    agent_status,
    diagnosed,
    put_workload,
    run_bounded,
    wait_for_swap,
)

from tmemh.image.manifest import ImageManifest
from tmemh.vm import ChannelSpec, VirtualMachine, VMSpec

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(os.geteuid() != 0, reason="guest image and VMs need root")]

VM_NAME = "soak-vm"
# The supervised agent (supervisor, serving agent, hardened standby) keeps its memory locked:
# a 160 MiB guest runs out of memory while it starts.
MEMORY_MIB = 256
MIN_ROUNDS = 2
SOAK_SECONDS = float(os.environ.get("TMEMH_SOAK_SECONDS", "0"))
ROUND_FACTOR = 3 if SOAK_SECONDS else 2  # a round fills this many times the guest's memory


def test_a_guest_filling_more_than_its_memory_round_after_round_never_hangs(
    guest_image: ImageManifest, vm_state: Path, tmp_path: Path
) -> None:
    with running_daemon("--memory-limit", "1G") as daemon:
        spec = VMSpec(name=VM_NAME, memory_mib=MEMORY_MIB, kernel_args=(f"tmem.vm={VM_NAME}",),
                      channels=(ChannelSpec(PORT, Path(daemon.admit(VM_NAME)), "connect"),))
        with VirtualMachine(spec, guest_image, backend="qemu", state_dir=vm_state) as vm, \
                diagnosed(vm, daemon):
            wait_for_swap(vm)
            put_workload(vm, tmp_path)
            rounds = []
            started = time.monotonic()
            while len(rounds) < MIN_ROUNDS or time.monotonic() - started < SOAK_SECONDS:
                run = run_bounded(vm, f"python3 /tmp/fill_verify.py {ROUND_FACTOR * MEMORY_MIB}",
                                  WORKLOAD_TIMEOUT)
                assert run.exit_code == 0, f"round {len(rounds) + 1}: {run.stdout}{run.stderr}"
                result = json.loads(run.stdout.strip().splitlines()[-1])
                assert result["bad"] == 0, f"round {len(rounds) + 1}: {result['first_bad']}"
                rounds.append(result)
            counters = agent_status(vm)["counters"]
    print(json.dumps({"seconds": round(time.monotonic() - started), "rounds": len(rounds),
                      "per_round_s": [round(r["fill_s"] + r["verify_s"], 1) for r in rounds],
                      "counters": counters}, indent=1))
    assert all(r["total_pswpout"] > (ROUND_FACTOR - 1) * MEMORY_MIB * 256 for r in rounds)
    assert counters["io_errors"] == 0 and counters["lost_pages"] == 0
    assert counters["nbd_trim_pages"] > 0  # freed rounds were trimmed, so flushed in tmem
