"""Choosing the accelerator: KVM when it really works, else TCG with longer timeouts.

``/dev/kvm`` existing is not enough: under nested virtualisation KVM can hang while the guest
kernel starts. So the probe boots the real guest kernel under ``-accel kvm`` with no root
disk and ``panic=-1``; a working KVM reaches the "no root" panic and QEMU exits (``-no-reboot``)
within a second or two. If it does not exit within the probe timeout, TCG is chosen.
The result is cached per process (per kernel). ``TMEMH_ACCEL=kvm|tcg`` skips the probe.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tmemh.procs import command_line

from .errors import InvalidEnvironment

logger = logging.getLogger(__name__)

QEMU_BINARY = "qemu-system-x86_64"
ACCEL_ENV = "TMEMH_ACCEL"
KVM_DEVICE = Path("/dev/kvm")
PROBE_TIMEOUT_S = 15.0
TCG_TIMEOUT_SCALE = 5.0
PANIC_MARKER = "Kernel panic"

Runner = Callable[..., Any]  # subprocess.run-compatible


@dataclass(frozen=True)
class AccelChoice:
    """The accelerator to use and how much to stretch guest timeouts for it."""

    name: str  # "kvm" or "tcg"
    timeout_scale: float
    reason: str

    def scaled(self, seconds: float) -> float:
        return seconds * self.timeout_scale


KVM = "kvm"
TCG = "tcg"
_cache: dict[str, AccelChoice] = {}


def reset_probe_cache() -> None:
    """Forget cached probe results (for tests)."""
    _cache.clear()


def choose_accelerator(kernel: Path, *, runner: Runner = subprocess.run,
                       kvm_device: Path = KVM_DEVICE,
                       environ: Mapping[str, str] | None = None) -> AccelChoice:
    """Return the accelerator for guests booting ``kernel``, probing KVM once per process."""
    forced = forced_accelerator(environ)
    if forced:
        return _make(forced, f"forced by {ACCEL_ENV}")
    key = str(kernel)
    if key not in _cache:
        choice = _probe(kernel, runner, kvm_device)
        logger.info("accelerator: %s (%s)", choice.name, choice.reason)
        _cache[key] = choice
    return _cache[key]


def forced_accelerator(environ: Mapping[str, str] | None = None) -> str | None:
    """The accelerator ``TMEMH_ACCEL`` forces ("kvm" or "tcg"), None if it is unset or empty;
    :class:`InvalidEnvironment` (a ValueError) for any other value."""
    env = os.environ if environ is None else environ
    forced = env.get(ACCEL_ENV, "").strip().lower()
    if forced and forced not in (KVM, TCG):
        raise InvalidEnvironment(
            f"{ACCEL_ENV} must be 'kvm' or 'tcg' (or unset to probe), not {env[ACCEL_ENV]!r}")
    return forced or None


def _make(name: str, reason: str) -> AccelChoice:
    return AccelChoice(name, 1.0 if name == KVM else TCG_TIMEOUT_SCALE, reason)


def _probe(kernel: Path, runner: Runner, kvm_device: Path) -> AccelChoice:
    if not os.access(kvm_device, os.R_OK | os.W_OK):
        return _make(TCG, f"{kvm_device} is missing or not accessible")
    command = kvm_probe_command(kernel)
    logger.debug("probing KVM: %s", command_line(command))
    try:
        result = runner(command, capture_output=True, text=True, errors="replace",
                        stdin=subprocess.DEVNULL, timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return _make(TCG, f"a KVM guest did not reach its first panic in {PROBE_TIMEOUT_S:.0f} s")
    except OSError as exc:
        return _make(TCG, f"cannot run {QEMU_BINARY}: {exc}")
    if PANIC_MARKER in (result.stdout or ""):
        return _make(KVM, "a KVM guest kernel booted and exited")
    return _make(TCG, f"KVM probe exited {result.returncode} without booting the kernel: "
                      f"{(result.stderr or '').strip()[-200:]}")


def kvm_probe_command(kernel: Path) -> list[str]:
    """Boot ``kernel`` under KVM with no root: it panics at once and QEMU exits."""
    return [QEMU_BINARY, "-accel", "kvm", "-cpu", "host", "-nodefaults", "-no-user-config",
            "-display", "none", "-m", "128", "-no-reboot", "-serial", "stdio",
            "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent"]
