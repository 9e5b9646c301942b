"""VM provisioning: describe a VM (VMSpec), boot it with QEMU or libvirt, reach it over SSH.

    image = build_image()                       # tmemh.image.build; cached after the first
    spec = VMSpec(name="g1", memory_mib=512,
                  channels=(ChannelSpec("org.tmem.0", Path("/run/tmemd.sock"), "connect"),))
    with VirtualMachine(spec, image, backend="qemu") as vm:   # or "libvirt", uri=...
        print(vm.run("uname -r", check=True).stdout)
        vm.set_disk_throttle(DiskThrottle(bytes_per_second=20_000_000, iops=200))
        print(vm.block_stats())

A second disk, /dev/vdb in the guest (serial ``tmemh-data``), throttled and counted apart:
``VMSpec(..., data_disk=DataDisk(size_mib=2048))``, then
``vm.set_disk_throttle(DiskThrottle(20_000_000), disk=DATA_DISK)``, ``vm.block_stats(DATA_DISK)``.

Modules: ``spec`` (the description), ``disks`` (disk slots, the qcow2 files a VM writes),
``render`` (QEMU argv and libvirt XML from one spec), ``accel`` (KVM probe),
``qemu_backend`` / ``libvirt_backend``, ``state`` (records of running VMs), ``machine`` (the
VM lifecycle). ``tmemh vm ...`` is the command line over it.
"""

from .backend import BlockStats
from .disks import DATA_DISK, ROOT_DISK
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
from .spec import ChannelSpec, DataDisk, DiskThrottle, TmemToolPort, VMSpec

__all__ = [
    "DATA_DISK", "ROOT_DISK", "BackendUnavailable", "BlockStats", "ChannelSpec", "DataDisk",
    "DiskThrottle", "HostPortInUse",
    "ImageMissing",
    "InvalidVMSpec", "RunState", "VMError", "VMExists", "VMLaunchFailure", "VMNotFound",
    "TmemToolPort", "VMOperationError", "VMSpec", "VMStateError", "VirtualMachine", "reap_stale",
]
