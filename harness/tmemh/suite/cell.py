"""One cell of a suite: a fresh VM, a memory configuration, a workload, measured.

Order of events, each recorded in the cell's directory (``cells/<cell id>/``):
SKIP if the configuration says it cannot run here; a tmemd if it needs one; the VM (booted
unthrottled) with the configuration's changes; the root file system grown to the shape's
disk size; the guest package copied in; the configuration prepared (``guest.log`` has every
command); the data disk's file system made and mounted (:mod:`tmemh.suite.datadisk`); the
workload's setup (untimed); then the disk throttle profile (on both disks), the page cache
dropped, the collectors started, the block counters read, the workload's run, the counters
read again, the collectors stopped and fetched; dmesg and the agent's log; teardown (also on
any error), and the console saved. Samples are parsed last (``series.json``). A guest that
stops answering during the run is given up on (:mod:`tmemh.suite.watchdog`): ERROR, with its
blocked tasks in ``hang.txt``.

A problem inside the cell becomes its status (ERROR, SKIP) and reason; only Ctrl-C leaves
the cell early, after tearing everything down.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tmemh.daemon import DaemonProcess, running_daemon
from tmemh.image.manifest import ImageManifest
from tmemh.ssh import SSHError
from tmemh.vm import DATA_DISK, BlockStats, VirtualMachine, VMSpec

from . import datadisk, guestcode, tracing
from .collect import GuestMonitor, HostSampler, guest_file
from .configs import CellHost
from .errors import ConfigurationUnavailable
from .guestshell import GuestShell
from .invoke import PhaseOutcome, run_phase
from .parsers import RawFormatError, parse_guest, parse_host
from .results import ERROR, PASS, SKIP, CellResult
from .series import guest_figures, guest_series, host_figures, host_series
from .suitefile import Cell
from .watchdog import PROBE_INTERVAL_S, GuestWatchdog

logger = logging.getLogger(__name__)

GUEST_SAMPLES_FILE = "guest-samples.txt"
HOST_SAMPLES_FILE = "host-samples.jsonl"
SERIES_FILE = "series.json"
HANG_DUMP_S = 30.0


@dataclass
class CellOptions:
    image: ImageManifest
    backend: str = "qemu"
    state_dir: Path | None = None
    sample_interval: float = 1.0
    vm_prefix: str = "tmemh-suite"
    watchdog_interval: float = PROBE_INTERVAL_S  # seconds between probes (and each's limit)


def new_result(cell: Cell) -> CellResult:
    return CellResult(id=cell.id, index=cell.index, workload=cell.workload.name,
                      configuration=cell.configuration.name, throttle=cell.throttle.name,
                      shape=cell.shape.name, repetition=cell.repetition,
                      collectors=cell.collectors)


def run_cell(cell: Cell, run_dir: Path, options: CellOptions) -> CellResult:
    """Run ``cell``; its result (never raises, except KeyboardInterrupt)."""
    cell_dir = run_dir / "cells" / cell.id
    cell_dir.mkdir(parents=True, exist_ok=True)
    result = new_result(cell)
    result.started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    clock = time.monotonic()
    try:
        reason = cell.configuration.unavailable()
        if reason:
            result.status, result.reason = SKIP, reason
        else:
            _CellRun(cell, cell_dir, options, result).run()
    except ConfigurationUnavailable as exc:
        result.status, result.reason = SKIP, str(exc)
    except Exception as exc:
        result.status, result.reason = ERROR, _one_line(exc)
        (cell_dir / "error.txt").write_text(traceback.format_exc())
        logger.info("cell %s: %s", cell.id, result.reason)
    finally:
        result.duration_s = round(time.monotonic() - clock, 2)
        result.files = {p.name: str(p.relative_to(run_dir)) for p in sorted(cell_dir.iterdir())}
        (cell_dir / "cell.json").write_text(json.dumps(result.to_json(), indent=1) + "\n")
    return result


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class _CellRun:
    """The steps of one cell that has a VM."""

    def __init__(self, cell: Cell, cell_dir: Path, options: CellOptions,
                 result: CellResult) -> None:
        self.cell = cell
        self.dir = cell_dir
        self.options = options
        self.result = result
        self.vm_name = f"{options.vm_prefix}-{cell.index:03d}"

    def run(self) -> None:
        cell, config = self.cell, self.cell.configuration
        with ExitStack() as stack:
            daemon: DaemonProcess | None = None
            if config.needs.daemon:
                daemon = stack.enter_context(
                    running_daemon(*config.daemon_args(cell.shape.memory_mib)))
                stack.callback(lambda: (self.dir / "tmemd.log").write_text(
                    daemon.log_text() if daemon else ""))
            host = CellHost(self.vm_name, daemon)
            spec = config.vm_spec(VMSpec(
                name=self.vm_name, memory_mib=cell.shape.memory_mib, vcpus=cell.shape.vcpus,
                disk_size_mib=cell.shape.disk_size_mib,
                data_disk=datadisk.data_disk(cell.shape.data_disk_size_mib)), host)
            if config.needs.swap_shim:
                spec = tracing.vm_spec(spec, cell.trace)
            vm = VirtualMachine(spec, self.options.image, backend=self.options.backend,
                                state_dir=self.options.state_dir, **config.vm_options(host))
            stack.callback(self._keep_console, vm)
            stack.enter_context(vm)
            guest = GuestShell(vm, self.dir / "guest.log", cell.shape.memory_mib)
            self._measure(vm, guest, daemon)

    def _measure(self, vm: VirtualMachine, guest: GuestShell,
                 daemon: DaemonProcess | None) -> None:
        cell, result = self.cell, self.result
        if cell.shape.disk_size_mib:
            guest.run("resize2fs /dev/vda")
        guestcode.install(guest)
        result.prepared = cell.configuration.prepare(guest)
        result.prepared["data_disk"] = datadisk.make_filesystem(
            guest, cell.configuration.data_device(result.prepared))
        setup = run_phase(guest, cell.workload, "setup", cell.seed, self.dir)
        result.metrics["setup_s"] = round(setup.host_s, 2)
        if setup.status != PASS:
            result.status, result.reason = setup.status, setup.reason
            return
        vm.set_disk_throttle(cell.throttle.throttle)
        vm.set_disk_throttle(cell.throttle.throttle, disk=DATA_DISK)
        guest.run("sync && echo 3 > /proc/sys/vm/drop_caches")
        monitor = GuestMonitor(guest, self.options.sample_interval)
        sampler = HostSampler(self.dir / HOST_SAMPLES_FILE, self.options.sample_interval,
                              _qemu_pid(vm), lambda: datadisk.total(datadisk.block_stats(vm)),
                              daemon.control if daemon else None, self.vm_name)
        if cell.collectors:
            monitor.start()
            sampler.start()
        before = datadisk.block_stats(vm)
        interval = self.options.watchdog_interval
        watchdog = GuestWatchdog(lambda: vm.run("true", timeout=min(interval, 60.0)).ok,
                                 lambda: self._give_up(vm), interval=interval)
        watchdog.start()
        try:
            outcome = run_phase(guest, cell.workload, "run", cell.seed, self.dir)
            after = datadisk.block_stats(vm)
        finally:
            watchdog.stop()
            sampler.stop()
            if cell.collectors and not watchdog.fired:
                try:
                    monitor.stop(self.dir / GUEST_SAMPLES_FILE)
                except SSHError as exc:  # a hung or dead guest: the run's error says more
                    logger.warning("cell %s: guest samples not fetched: %s", cell.id, exc)
        result.status, result.reason = outcome.status, outcome.reason
        if watchdog.fired:
            result.status = ERROR
            result.reason = (f"the guest stopped answering for {watchdog.silent_s:.0f} s "
                             "during the run (hung; its blocked tasks in hang.txt)")
        result.workload_report = outcome.report
        result.metrics.update(_metrics(outcome, before, after))
        if watchdog.fired:
            return
        self._guest_logs(guest)
        if cell.collectors:
            self._parse_samples(outcome)

    def _give_up(self, vm: VirtualMachine) -> None:
        """The watchdog's last act: blocked tasks to the console, the connection dropped (the
        workload's command then ends with an error)."""
        def dump() -> None:
            try:
                (self.dir / "hang.txt").write_text(vm.diagnose("w"))
            except Exception as exc:
                logger.warning("cell %s: no task dump from the hung guest: %s", self.cell.id,
                               exc)

        dumper = threading.Thread(target=dump, name="hang-dump", daemon=True)
        dumper.start()
        dumper.join(HANG_DUMP_S)  # a QEMU that does not answer either is not waited for
        try:
            vm.ssh().close()
        except SSHError as exc:
            logger.warning("cell %s: %s", self.cell.id, exc)

    def _guest_logs(self, guest: GuestShell) -> None:
        (self.dir / "dmesg.txt").write_text(guest.run("dmesg", check=False).stdout)
        if self.cell.configuration.needs.swap_shim:
            guest_file(guest, "/var/log/tmem-agent.log", self.dir / "agent.log")
            status = guest.run("tmem-agent status", check=False)
            if status.ok:
                (self.dir / "agent-status.json").write_text(status.stdout)
            if self.cell.trace != "off":
                name = tracing.fetch(guest, self.dir, status.stdout if status.ok else "")
                self.result.trace = f"cells/{self.cell.id}/{name}" if name else None

    def _parse_samples(self, outcome: PhaseOutcome) -> None:
        """Series and summary figures from the raw samples (a bad file is logged, not fatal:
        the raw files stay for a later look)."""
        series: dict[str, Any] = {}
        try:
            guest = parse_guest((self.dir / GUEST_SAMPLES_FILE).read_text())
            first = min((e[0][0] for e in guest.by_source.values() if e), default=0.0)
            t0 = float(outcome.report.get("started") or first)
            series["guest"] = guest_series(guest, t0)
            self.result.metrics.update(guest_figures(guest))
        except (OSError, RawFormatError, ValueError) as exc:
            logger.warning("cell %s: guest samples not parsed: %s", self.cell.id, exc)
        try:
            host = parse_host((self.dir / HOST_SAMPLES_FILE).read_text())
            series["host"] = host_series(host, outcome.started)
            self.result.metrics.update(host_figures(host))
        except (OSError, RawFormatError, ValueError) as exc:
            logger.warning("cell %s: host samples not parsed: %s", self.cell.id, exc)
        (self.dir / SERIES_FILE).write_text(json.dumps(series) + "\n")
        metrics = self.result.metrics
        if metrics.get("collector_cpu_s") is not None and metrics.get("time_s"):
            metrics["collector_share"] = round(metrics["collector_cpu_s"] / metrics["time_s"], 5)

    def _keep_console(self, vm: VirtualMachine) -> None:
        """Copy the console log into the cell's directory and remove the VM's leftovers."""
        if vm.console_log.exists():
            shutil.copyfile(vm.console_log, self.dir / "console.log")
            vm.console_log.unlink()
        for name in ("qemu.log",):
            leftover = vm.run_dir / name
            if leftover.exists():
                shutil.copyfile(leftover, self.dir / name)
                leftover.unlink()
        try:
            vm.run_dir.rmdir()
        except OSError:
            pass


def _qemu_pid(vm: VirtualMachine) -> int | None:
    record = vm.record
    pid = record.handle.get("pid") if record is not None else None
    return int(pid) if pid else None


def _metrics(outcome: PhaseOutcome, before: dict[str, BlockStats],
             after: dict[str, BlockStats]) -> dict[str, Any]:
    report = outcome.report
    vmstat = report.get("vmstat", {})
    metrics: dict[str, Any] = {
        "time_s": report.get("time_s"),
        "host_time_s": round(outcome.host_s, 3),
        "bytes": report.get("bytes"),
        **datadisk.disk_metrics(before, after),
        "swap_in_pages": vmstat.get("pswpin"),
        "swap_out_pages": vmstat.get("pswpout"),
        "major_faults": vmstat.get("pgmajfault"),
    }
    for name, seconds in report.get("phases", {}).items():
        metrics[f"phase_{name}"] = seconds
    uffd = report.get("uffd") or {}  # a userfaultfd region beside the swap path (anon)
    for name in ("faults", "faults_per_s", "pages_per_s"):
        metrics[f"uffd_{name}"] = uffd.get(name)
    return {k: v for k, v in metrics.items() if v is not None}
