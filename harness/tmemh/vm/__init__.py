"""VM provisioning: describe a VM (VMSpec), boot it with QEMU or libvirt, reach it over SSH."""

from .backend import BlockStats
from .errors import (
    BackendUnavailable,
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
    "BackendUnavailable", "BlockStats", "ChannelSpec", "DiskThrottle", "ImageMissing",
    "InvalidVMSpec", "RunState", "VMError", "VMExists", "VMLaunchFailure", "VMNotFound",
    "VMOperationError", "VMSpec", "VMStateError", "VirtualMachine", "reap_stale",
]
