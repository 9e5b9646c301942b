"""One VM: launch it from a spec and an image, drive it, and tear it down without leftovers.

Shaped like QEMU's ``python/qemu/machine``: explicit run states, a launch split into
pre-launch (host files, port, accelerator), launch (backend start) and post-launch (wait for
SSH), and an idempotent :meth:`VirtualMachine.shutdown` that also runs after a failed launch.
A running VM is recorded in the state directory, so another process can
:meth:`VirtualMachine.attach` to it by name.

With ``tmem_control`` (``vm up --tmem``) the pre-launch admits the VM to the tmemd behind
that control socket, for the uid its backend runs QEMU as, and wires the returned socket of
the VM's own to the virtio-serial port ``org.tmem.0`` (and ``tmem.vm=NAME`` on the kernel
command line, the name the guest agent says hello with). The admission is recorded and
dismissed again at every teardown: a failed launch, ``shutdown``, a reaped stale record.
"""

from __future__ import annotations

import enum
import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from tmemh.image.manifest import ImageManifest
from tmemh.ssh import (
    SSH_HOST,
    CommandResult,
    GuestConnection,
    SSHError,
    free_loopback_port,
    ssh_config_block,
    wait_for_ssh,
)
from tmemh.sshexec import Source

from . import tmemadmission
from .accel import choose_accelerator
from .backend import Backend, BlockStats
from .disks import (
    DATA_DISK,
    DATA_DISK_FILE,
    ROOT_DISK,
    ROOT_DISK_FILE,
    DataDiskPlan,
    MiB,
    create_qcow2,
    disk_slot,
)
from .errors import (
    HostPortInUse,
    InvalidVMSpec,
    VMError,
    VMExists,
    VMLaunchFailure,
    VMNotFound,
    VMOperationError,
    VMStateError,
)
from .libvirt_backend import DEFAULT_URI, LibvirtBackend
from .qemu_backend import QemuBackend
from .render import LaunchConfig
from .spec import DiskThrottle, VMSpec
from .state import StateDir, VMRecord

logger = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("qemu", "libvirt")
BOOT_TIMEOUT_S = 60.0  # with KVM; stretched by the accelerator's timeout scale under TCG
CONSOLE_TAIL_LINES = 60  # a panic with its call trace and offsets fits
CONSOLE_TAIL_BYTES = 64 * 1024  # read at most this much of the log's end
PANIC_MARKER = "Kernel panic - not syncing"
PANIC_EXIT_GRACE_S = 5.0
SYSRQ_SETTLE_S = 2.0
# An auto-picked SSH port is free when picked but may be taken before QEMU binds it.
SSH_PORT_ATTEMPTS = 3

_F = TypeVar("_F", bound=Callable[..., Any])


class ImageMissing(VMError):
    """The image's kernel, initramfs, root disk or key is not there."""


class RunState(enum.Enum):
    CREATED = "created"
    LAUNCHING = "launching"
    RUNNING = "running"
    FAILED = "failed"
    SHUT_DOWN = "shut down"


def requires_state(*states: RunState) -> Callable[[_F], _F]:
    """Refuse a method call unless the VM is in one of ``states``."""

    def decorate(method: _F) -> _F:
        @functools.wraps(method)
        def wrapper(self: VirtualMachine, *args: Any, **kwargs: Any) -> Any:
            if self.state not in states:
                raise VMStateError(f"{method.__name__}() needs the VM {self.name} to be "
                                   f"{'/'.join(s.value for s in states)}; it is {self.state.value}")
            return method(self, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def resolve_backend(name: str, uri: str | None) -> Backend:
    """Make the backend called ``name``; "auto" is libvirt when a daemon answers, else qemu."""
    if name == "qemu":
        if uri:
            raise VMError("--connect URI only applies to the libvirt backend")
        return QemuBackend()
    if name == "libvirt":
        backend = LibvirtBackend(uri or DEFAULT_URI)
        backend.connect()
        return backend
    if name == "auto":
        backend = LibvirtBackend(uri or DEFAULT_URI)
        try:
            backend.connect()
        except VMError:
            if uri:
                raise
            return QemuBackend()
        return backend
    raise VMError(f"unknown backend {name!r}; use one of {BACKENDS} or 'auto'")


def backend_for_record(record: VMRecord) -> Backend:
    if record.backend == "qemu":
        return QemuBackend.from_handle(record.handle, record.command)
    if record.backend == "libvirt":
        return LibvirtBackend.from_handle(record.handle)
    raise VMError(f"VM {record.name}: unknown backend {record.backend!r} in its record")


def read_console_tail(path: Path, lines: int = CONSOLE_TAIL_LINES) -> str:
    """The last ``lines`` lines of a console log ("" if there is none)."""
    try:
        with open(path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - CONSOLE_TAIL_BYTES))
            data = log.read()
    except OSError:
        return ""
    text = data.decode(errors="replace").replace("\r", "")
    return "\n".join(text.splitlines()[-lines:])


class VirtualMachine:
    """A VM booted from a guest image. Use as a context manager, or launch()/shutdown()."""

    def __init__(self, spec: VMSpec, image: ImageManifest | None, *, backend: str = "auto",
                 uri: str | None = None, state_dir: Path | None = None,
                 boot_timeout: float | None = None,
                 tmem_control: Path | None = None) -> None:
        self.spec = spec
        self.image = image
        self.state = RunState.CREATED
        self._backend_name = backend
        self._uri = uri
        self._boot_timeout = boot_timeout
        self._states = StateDir(state_dir)
        self._backend: Backend | None = None
        self._record: VMRecord | None = None
        self._ssh: GuestConnection | None = None
        self._created_paths: list[Path] = []
        if spec.tmem_tool_ports and tmem_control is None:
            raise InvalidVMSpec(f"{spec.name}: tmem tool ports need a tmemd (tmem_control)")
        self._tmem_control = tmem_control
        self.tmem: dict[str, Any] | None = None  # the admission, once made (as recorded)
        self.tmem_dismissal = ""  # how the teardown's dismissal went ("" = none was due)
        self.data_disk: dict[str, Any] | None = None  # the data disk, once made (as recorded)
        self.run_dir = self._states.run_dir(spec.name)
        self.console_log = self.run_dir / "console.log"
        self.logger = logger.getChild(spec.name)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def backend(self) -> Backend | None:
        return self._backend

    @property
    def record(self) -> VMRecord | None:
        return self._record

    def __enter__(self) -> VirtualMachine:
        if self.state is RunState.CREATED:
            self.launch()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    # -- launch ---------------------------------------------------------------------------

    @requires_state(RunState.CREATED)
    def launch(self) -> None:
        """Start the VM and wait until SSH answers; on any failure, clean up and raise."""
        self.state = RunState.LAUNCHING
        try:
            config = self._pre_launch()  # bad input and missing parts raise as they are
            try:
                config = self._launch(config)
                self._post_launch(config)
            except VMLaunchFailure:
                raise
            except Exception as exc:
                raise self._launch_failure(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            self.state = RunState.FAILED
            try:
                self._cleanup()
            except Exception:  # keep the launch error; the clean-up error goes to the log
                self.logger.exception("clean-up after the failed launch failed")
            raise
        self.state = RunState.RUNNING

    def _pre_launch(self) -> LaunchConfig:
        image = self.image
        if image is None:
            raise ImageMissing("no guest image given")
        missing = image.missing_files()
        if missing:
            raise ImageMissing(f"guest image {image.directory} is incomplete, missing: "
                               f"{', '.join(map(str, missing))}; run `tmemh image build`")
        data_plan = DataDiskPlan.check(self.spec.data_disk)  # a bad base: nothing created
        reap_stale(self._states, only=self.name)
        if self._states.load(self.name) is not None:
            raise VMExists(f"VM {self.name} is already running (state in {self.run_dir})")
        self._backend = resolve_backend(self._backend_name, self._uri)
        accel = choose_accelerator(image.kernel)
        self._boot_timeout = self._boot_timeout or accel.scaled(BOOT_TIMEOUT_S)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.console_log.write_bytes(b"")
        overlay = self.run_dir / ROOT_DISK_FILE
        self._created_paths.append(overlay)
        create_qcow2(overlay, None if self.spec.disk_size_mib is None
                     else self.spec.disk_size_mib * MiB, image.rootfs)
        data_disk = None
        if data_plan is not None:
            data_disk = self.run_dir / DATA_DISK_FILE
            self._created_paths.append(data_disk)
            self.data_disk = data_plan.create(data_disk)
        port = self.spec.ssh_port or free_loopback_port()
        self.logger.info("launching with %s/%s, %d MiB, %d vCPU, ssh port %d",
                         self._backend.name, accel.name, self.spec.memory_mib, self.spec.vcpus,
                         port)
        config = LaunchConfig(spec=self.spec, kernel=image.kernel, initramfs=image.initramfs,
                              disk=overlay, base_cmdline=image.cmdline,
                              console_log=self.console_log,
                              qmp_socket=self.run_dir / "qmp.sock", ssh_port=port,
                              accel=accel.name, data_disk=data_disk)
        return config if self._tmem_control is None else self._admit_to_tmem(config)

    def _admit_to_tmem(self, config: LaunchConfig) -> LaunchConfig:
        """Admit the VM (and its tool ports) to tmemd for QEMU's uid; the config with the
        ports wired to their sockets."""
        assert self._backend is not None and self._tmem_control is not None
        uid = self._backend.qemu_uid(config)
        self.spec, self.tmem = tmemadmission.admit(self._tmem_control, self.spec, uid)
        self.logger.info("admitted to tmemd at %s for owner uid %d: %s", self._tmem_control,
                         uid, ", ".join(f"port {port} as {client}"
                                        for port, client in self.tmem["clients"].items()))
        return replace(config, spec=self.spec)

    def _launch(self, config: LaunchConfig) -> LaunchConfig:
        """Start the backend; return the launch config used (the SSH port may have changed)."""
        assert self._backend is not None and self.image is not None
        self._created_paths += [config.qmp_socket] + [
            c.socket_path for c in self.spec.channels if c.mode == "server"]
        config = self._start_backend(config)
        self._record = VMRecord(
            name=self.name, backend=self._backend.name, handle=self._backend.handle(),
            run_dir=str(self.run_dir), console_log=str(self.console_log),
            overlay=str(config.disk), ssh_port=config.ssh_port, ssh_user=self.image.ssh_user,
            ssh_key=str(self.image.ssh_private_key), accel=config.accel,
            sockets=[str(p) for p in self._created_paths
                     if p not in (config.disk, config.data_disk)],
            command=self._backend.command, tmem=self.tmem, data_disk=self.data_disk)
        self._states.save(self._record)
        return config

    def _start_backend(self, config: LaunchConfig) -> LaunchConfig:
        """Start the backend; if an auto-picked SSH port was taken meanwhile, pick another."""
        assert self._backend is not None
        for _ in range(SSH_PORT_ATTEMPTS - 1):
            try:
                self._backend.start(config)
                return config
            except HostPortInUse:
                if self.spec.ssh_port is not None:
                    raise
                taken, config = config.ssh_port, replace(config, ssh_port=free_loopback_port())
                self.logger.warning("ssh port %d was taken before the VM bound it; "
                                    "retrying with port %d", taken, config.ssh_port)
        self._backend.start(config)  # the last attempt: its error goes to the caller
        return config

    def _post_launch(self, config: LaunchConfig) -> None:
        assert self._record is not None and self._boot_timeout is not None
        started = time.monotonic()
        try:
            self._ssh = wait_for_ssh(SSH_HOST, config.ssh_port, self._record.ssh_user,
                                     Path(self._record.ssh_key), self._boot_timeout,
                                     still_starting=self._check_still_booting)
        except SSHError as exc:
            raise self._launch_failure(f"guest not reachable over SSH: {exc}") from exc
        self.logger.info("ready over SSH after %.1f s", time.monotonic() - started)

    def _check_still_booting(self) -> None:
        assert self._backend is not None
        if not self._backend.is_running():
            raise self._launch_failure("the VM stopped while booting")
        if PANIC_MARKER in read_console_tail(self.console_log, CONSOLE_TAIL_LINES):
            deadline = time.monotonic() + PANIC_EXIT_GRACE_S  # panic=-1: QEMU exits soon,
            while self._backend.is_running() and time.monotonic() < deadline:  # with a code
                time.sleep(0.1)
            raise self._launch_failure("the guest kernel panicked")

    def _launch_failure(self, reason: str) -> VMLaunchFailure:
        assert self._backend is not None
        return VMLaunchFailure(reason, self._backend.command, self._backend.exit_code(),
                               self.console_tail())

    # -- a running VM ---------------------------------------------------------------------

    @classmethod
    def attach(cls, name: str, state_dir: Path | None = None) -> VirtualMachine:
        """The running VM recorded under ``name`` (stale records are cleaned up first)."""
        states = StateDir(state_dir)
        reap_stale(states, only=name)
        record = states.load(name)
        if record is None:
            raise VMNotFound(f"no running VM named {name!r} (state dir {states.path})")
        return cls._from_record(record, states)

    @classmethod
    def _from_record(cls, record: VMRecord, states: StateDir) -> VirtualMachine:
        vm = cls(VMSpec(name=record.name), None, backend=record.backend, state_dir=states.path)
        vm._backend = backend_for_record(record)
        vm._record = record
        vm.tmem = record.tmem
        vm.data_disk = record.data_disk
        vm._created_paths = [Path(record.overlay)] + [Path(p) for p in record.sockets]
        if record.data_disk is not None:
            vm._created_paths.append(Path(record.data_disk["path"]))
        vm.state = RunState.RUNNING
        return vm

    def console_tail(self, lines: int = CONSOLE_TAIL_LINES) -> str:
        return read_console_tail(self.console_log, lines)

    @requires_state(RunState.RUNNING)
    def ssh(self) -> GuestConnection:
        """The VM's guest connection (opened again if it was closed or dropped)."""
        assert self._record is not None
        if self._ssh is not None and not self._ssh.is_connected:
            self._ssh.close()
            self._ssh = None
        if self._ssh is None:
            self._ssh = GuestConnection(SSH_HOST, self._record.ssh_port, self._record.ssh_user,
                                        Path(self._record.ssh_key))
        return self._ssh

    def run(self, command: str, timeout: float | None = None, check: bool = False,
            stdin: Source = None) -> CommandResult:
        """Run ``command`` in the guest and keep its output (no time limit by default)."""
        return self.ssh().run(command, timeout=timeout, check=check, stdin=stdin)

    def upload(self, sources: Sequence[Path], dest: str) -> list[str]:
        """Copy host files and trees into the guest, like ``scp -r`` (modes kept)."""
        return self.ssh().upload(sources, dest)

    def download(self, sources: Sequence[str], dest: Path) -> list[Path]:
        """Copy guest files and trees to the host, like ``scp -r`` (modes kept)."""
        return self.ssh().download(sources, dest)

    @requires_state(RunState.RUNNING)
    def ssh_config(self) -> str:
        """An OpenSSH config block (``Host NAME``) for reaching this VM with ssh, scp, rsync."""
        assert self._record is not None
        return ssh_config_block(self.name, self._record.ssh_port, self._record.ssh_user,
                                Path(self._record.ssh_key))

    @requires_state(RunState.RUNNING)
    def diagnose(self, letters: str = "tw") -> str:
        """Dump tasks (SysRq t) and blocked tasks (w) to the console; return the new output.

        SysRq 9 goes first: under ``quiet`` the dumps are below the console log level.
        """
        assert self._backend is not None
        before = self.console_log.stat().st_size if self.console_log.exists() else 0
        for letter in "9" + letters:
            self._backend.send_sysrq(letter)
        time.sleep(SYSRQ_SETTLE_S)
        with open(self.console_log, "rb") as log:
            log.seek(before)
            return log.read().decode(errors="replace").replace("\r", "")

    @requires_state(RunState.RUNNING)
    def set_disk_throttle(self, throttle: DiskThrottle, disk: str = ROOT_DISK) -> None:
        """Throttle ``disk``: ROOT_DISK (/dev/vda, the default) or DATA_DISK (/dev/vdb)."""
        self._backend_for_disk(disk).set_throttle(throttle, disk)
        self.logger.info("%s disk throttle now %d B/s, %d IOPS (0 = unlimited)", disk,
                         throttle.bytes_per_second, throttle.iops)

    @requires_state(RunState.RUNNING)
    def disk_throttle(self, disk: str = ROOT_DISK) -> DiskThrottle:
        return self._backend_for_disk(disk).throttle(disk)

    @requires_state(RunState.RUNNING)
    def block_stats(self, disk: str = ROOT_DISK) -> BlockStats:
        return self._backend_for_disk(disk).block_stats(disk)

    def _backend_for_disk(self, disk: str) -> Backend:
        """The backend, once ``disk`` is known to be one this VM has."""
        assert self._backend is not None
        disk_slot(disk)  # an unknown name raises
        if disk == DATA_DISK and self.data_disk is None:
            raise VMOperationError(f"VM {self.name} has no data disk (vm up --data-disk SIZE)")
        return self._backend

    def is_running(self) -> bool:
        return self._backend is not None and self._backend.is_running()

    # -- teardown -------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop the VM and remove its overlay, sockets and record. Safe to call repeatedly."""
        if self.state in (RunState.CREATED, RunState.SHUT_DOWN):
            self.state = RunState.SHUT_DOWN
            return
        self._cleanup()
        self.state = RunState.SHUT_DOWN

    def _cleanup(self) -> None:
        """Close SSH, stop the VM, remove what this object created (the console log stays)."""
        if self._ssh is not None:
            self._ssh.close()
            self._ssh = None
        try:
            if self._backend is not None:
                self._backend.stop()
        finally:
            for path in self._created_paths:
                path.unlink(missing_ok=True)
            if self.tmem is not None:  # after QEMU stopped: nothing reconnects
                self._dismiss_from_tmem(self.tmem)
            if self._record is not None:  # only a record this object wrote or attached to
                self._states.remove(self.name)
                self._record = None
        if self._created_paths:
            self.logger.info("torn down (console log kept in %s)", self.console_log)
            self._created_paths = []

    def _dismiss_from_tmem(self, tmem: dict[str, Any]) -> None:
        """Dismiss the VM from its tmemd; a daemon that is gone is logged, not raised."""
        self.tmem = None
        self.tmem_dismissal = tmemadmission.dismiss(tmem, self.name)
        self.logger.info("%s", self.tmem_dismissal)


def reap_stale(states: StateDir, only: str | None = None) -> list[str]:
    """Clean up records whose VM is gone (process exited, domain gone); return their names."""
    reaped = []
    for name in [only] if only else states.names():
        record = states.load(name)
        if record is None:
            continue
        backend = backend_for_record(record)
        try:
            alive = backend.is_running()
        except VMError as exc:
            logger.warning("cannot tell whether VM %s is running: %s", name, exc)
            continue
        if not alive:
            logger.info("VM %s is gone; removing its stale state", name)
            VirtualMachine._from_record(record, states)._cleanup()
            reaped.append(name)
    return reaped
