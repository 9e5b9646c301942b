"""Backend that runs the VM as a libvirt domain (any URI, e.g. qemu:///system).

The domain is defined persistently and started, so it stays visible after a crash until
:meth:`LibvirtBackend.stop` destroys and undefines it. Host paths in the domain (kernel,
overlay, console log, sockets) must exist on the libvirt host.
"""

from __future__ import annotations

import logging
import pwd
import xml.etree.ElementTree as ET
from typing import Any

from .backend import (
    KEY_LEFTALT,
    KEY_SYSRQ,
    SYSRQ_LETTER_KEYCODES,
    Backend,
    BlockStats,
    check_sysrq_letter,
)
from .disks import ROOT_DISK, disk_slot
from .errors import (
    HOSTFWD_FAILURE_TEXT,
    BackendUnavailable,
    HostPortInUse,
    VMOperationError,
    VMStateError,
)
from .render import LaunchConfig, domain_xml
from .spec import DiskThrottle

logger = logging.getLogger(__name__)

DEFAULT_URI = "qemu:///system"

try:
    import libvirt
except ImportError:  # the optional extra "libvirt" is not installed
    libvirt = None
else:
    # libvirt prints every error to stderr by default; errors reach us as exceptions anyway.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def open_connection(uri: str) -> Any:
    """Open a libvirt connection or raise BackendUnavailable saying why."""
    if libvirt is None:
        raise BackendUnavailable("libvirt-python is not installed (pip install '.[libvirt]')")
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise BackendUnavailable(f"cannot connect to libvirt at {uri!r}: "
                                 f"{exc.get_error_message()}") from exc


class LibvirtBackend(Backend):
    name = "libvirt"

    def __init__(self, uri: str = DEFAULT_URI, domain_name: str | None = None) -> None:
        self.uri = uri
        self.domain_name = domain_name
        self._connection: Any = None
        self._xml_path = ""

    @classmethod
    def from_handle(cls, handle: dict[str, Any]) -> LibvirtBackend:
        return cls(str(handle["uri"]), str(handle["domain"]))

    @property
    def command(self) -> list[str]:
        return ["virsh", "-c", self.uri, "create", self._xml_path or "<domain xml>"]

    def handle(self) -> dict[str, Any]:
        return {"uri": self.uri, "domain": self.domain_name}

    def connect(self) -> None:
        """Connect now (raises BackendUnavailable); other calls connect lazily."""
        if self._connection is None:
            self._connection = open_connection(self.uri)

    def _lookup(self) -> Any:
        """The domain object, or None if libvirt does not know it."""
        self.connect()
        if self.domain_name is None:
            return None
        try:
            return self._connection.lookupByName(self.domain_name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise VMOperationError(f"libvirt lookup of {self.domain_name}: {exc}") from exc

    def _running_domain(self) -> Any:
        domain = self._lookup()
        if domain is None or not domain.isActive():
            raise VMStateError(f"domain {self.domain_name} is not running")
        return domain

    def start(self, config: LaunchConfig) -> None:
        self.connect()
        self.domain_name = config.domain_name
        if self._lookup() is not None:
            raise VMOperationError(f"libvirt domain {self.domain_name} already exists at "
                                   f"{self.uri}; run `tmemh vm down {config.spec.name}`")
        xml = domain_xml(config)
        xml_path = config.console_log.with_name("domain.xml")
        xml_path.write_text(xml)
        self._xml_path = str(xml_path)
        try:
            domain = self._connection.defineXML(xml)
        except libvirt.libvirtError as exc:
            raise VMOperationError(f"libvirt rejected the domain XML: {exc}") from exc
        try:
            domain.create()
        except libvirt.libvirtError as exc:
            domain.undefine()
            if HOSTFWD_FAILURE_TEXT in str(exc):
                raise HostPortInUse(f"host port 127.0.0.1:{config.ssh_port} for SSH is in use: "
                                    f"{exc}", self.command) from exc
            raise VMOperationError(f"libvirt could not start {self.domain_name}: {exc}") from exc
        logger.info("libvirt domain %s started at %s", self.domain_name, self.uri)

    def qemu_uid(self, config: LaunchConfig) -> int:
        """The uid QEMU runs as for this domain: the static DAC label of the domain XML if it
        has one (the harness's template pins root), else the QEMU driver's DAC base label for
        the domain type (its ``user`` in qemu.conf), from the host capabilities."""
        root = ET.fromstring(domain_xml(config))
        for seclabel in root.iter("seclabel"):
            label = seclabel.findtext("label")
            if seclabel.get("model") == "dac" and seclabel.get("type") == "static" and label:
                return _label_uid(label)
        self.connect()
        try:
            capabilities = ET.fromstring(self._connection.getCapabilities())
        except libvirt.libvirtError as exc:
            raise VMOperationError(f"libvirt capabilities at {self.uri}: {exc}") from exc
        for secmodel in capabilities.iterfind("host/secmodel"):
            if secmodel.findtext("model") != "dac":
                continue
            for base in secmodel.iterfind("baselabel"):
                if base.get("type") == root.get("type") and base.text:
                    return _label_uid(base.text)
        raise VMOperationError(f"libvirt at {self.uri} names no DAC user for "
                               f"{root.get('type')} domains")

    def is_running(self) -> bool:
        domain = self._lookup()
        return domain is not None and bool(domain.isActive())

    def stop(self) -> None:
        if self.domain_name is None:
            return
        domain = self._lookup()
        if domain is None:
            return
        try:
            if domain.isActive():
                domain.destroy()
            domain.undefine()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise VMOperationError(f"cannot remove domain {self.domain_name}: {exc}") from exc
        logger.info("libvirt domain %s destroyed and undefined", self.domain_name)

    def send_sysrq(self, letter: str) -> None:
        keys = [KEY_LEFTALT, KEY_SYSRQ, SYSRQ_LETTER_KEYCODES[check_sysrq_letter(letter)]]
        self._call("sendKey", libvirt.VIR_KEYCODE_SET_LINUX, 0, keys, len(keys), 0)

    def set_throttle(self, throttle: DiskThrottle, disk: str = ROOT_DISK) -> None:
        params = {"total_bytes_sec": throttle.bytes_per_second,
                  "total_iops_sec": throttle.iops}
        self._call("setBlockIoTune", disk_slot(disk).target, params,
                   libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def throttle(self, disk: str = ROOT_DISK) -> DiskThrottle:
        tune = self._call("blockIoTune", disk_slot(disk).target, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        return DiskThrottle(int(tune["total_bytes_sec"]), int(tune["total_iops_sec"]))

    def block_stats(self, disk: str = ROOT_DISK) -> BlockStats:
        read_ops, read_bytes, write_ops, write_bytes, _errors = self._call(
            "blockStats", disk_slot(disk).target)
        return BlockStats(int(read_bytes), int(write_bytes), int(read_ops), int(write_ops))

    def _call(self, method: str, *args: Any) -> Any:
        domain = self._running_domain()
        try:
            return getattr(domain, method)(*args)
        except libvirt.libvirtError as exc:
            raise VMOperationError(f"libvirt {method} on {self.domain_name}: {exc}") from exc


def _label_uid(label: str) -> int:
    """The uid of a DAC label ``USER:GROUP``, where ``+N`` is a number and a name is looked
    up."""
    user = label.split(":", 1)[0].strip()
    if user.startswith("+"):
        return int(user[1:])
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise VMOperationError(f"libvirt's QEMU user {user!r} does not exist here") from None
