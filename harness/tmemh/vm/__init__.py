"""VM provisioning: describe a VM (VMSpec), boot it with QEMU or libvirt, reach it over SSH.

    image = build_image()                       # tmemh.image.build; cached after the first
    spec = VMSpec(name="g1", memory_mib=512,
                  channels=(ChannelSpec("org.tmem.0", Path("/run/tmemd.sock"), "connect"),))
    with VirtualMachine(spec, image, backend="qemu") as vm:   # or "libvirt", uri=...
        print(vm.run("uname -r", check=True).stdout)
        vm.set_disk_throttle(DiskThrottle(bytes_per_second=20_000_000, iops=200))
        print(vm.block_stats())

Modules: ``spec`` (the description), ``render`` (QEMU argv and libvirt XML from one spec),
``accel`` (KVM probe), ``qemu_backend`` / ``libvirt_backend``, ``state`` (records of running
VMs), ``machine`` (the VM lifecycle). ``tmemh vm ...`` is the command line over it.
"""

from .backend import BlockStats
from .errors import (
    BackendUnavailable,
    HostPortInUse,
    InvalidVMSpec,
    VMError,
    VMExists,
    VMLaunchFailure,
    VMNotFound,
    VMOperationError,
    VMStateError,
)
from .machine import ImageMissing, RunState, VirtualMachine, reap_stale
from .spec import ChannelSpec, DiskThrottle, VMSpec

__all__ = [
    "BackendUnavailable", "BlockStats", "ChannelSpec", "DiskThrottle", "HostPortInUse",
    "ImageMissing",
    "InvalidVMSpec", "RunState", "VMError", "VMExists", "VMLaunchFailure", "VMNotFound",
    "VMOperationError", "VMSpec", "VMStateError", "VirtualMachine", "reap_stale",
]
