"""Parsers of the collectors' raw formats, run after the workload (never while it runs).

Guest samples (:mod:`tmemh.suite.guest.monitor`): text sections ``@ EPOCH SOURCE`` followed
by the source's raw contents. Host samples (:class:`tmemh.suite.collect.HostSampler`): JSON
lines with ``t``, ``source`` and ``raw``. Each source has a parser from raw text to numbers;
:mod:`tmemh.suite.series` turns the parsed samples into time series.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

GUEST_FORMAT = "#tmemh-guest-samples 1"
ZRAM_FIELDS = {
    "mm_stat": ("orig_data_size", "compr_data_size", "mem_used_total", "mem_limit",
                "mem_used_max", "same_pages", "pages_compacted", "huge_pages",
                "huge_pages_since"),
    "io_stat": ("failed_reads", "failed_writes", "invalid_io", "notify_free"),
    "bd_stat": ("bd_count", "bd_reads", "bd_writes"),
}


class RawFormatError(ValueError):
    """Samples that are not in the format their parser reads."""


@dataclass
class Samples:
    """Raw samples by source, in time order: ``{source: [(epoch, raw), ...]}``."""

    header: dict[str, Any] = field(default_factory=dict)
    by_source: dict[str, list[tuple[float, Any]]] = field(default_factory=dict)
    end: dict[str, Any] = field(default_factory=dict)

    def add(self, source: str, when: float, raw: Any) -> None:
        self.by_source.setdefault(source, []).append((when, raw))

    def get(self, source: str) -> list[tuple[float, Any]]:
        return self.by_source.get(source, [])


# -- the guest's file ----------------------------------------------------------------------

def split_guest_samples(text: str) -> Samples:
    """Sections of a guest samples file (a cut-off last section is kept as it is)."""
    lines = text.splitlines(keepends=True)
    if not lines or not lines[0].startswith(GUEST_FORMAT):
        raise RawFormatError(f"not a guest samples file (first line {lines[:1]!r})")
    samples = Samples(header=_words(lines[0][len(GUEST_FORMAT):]))
    current: tuple[float, str] | None = None
    body: list[str] = []

    def close() -> None:
        if current is not None:
            samples.add(current[1], current[0], "".join(body))

    for line in lines[1:]:
        if line.startswith("@ "):
            close()
            body = []
            parts = line.split()
            if len(parts) < 3:
                raise RawFormatError(f"bad section line {line!r}")
            if parts[2] == "end":
                samples.end = {"t": float(parts[1]), **_words(" ".join(parts[3:]))}
                current = None
            else:
                current = (float(parts[1]), parts[2])
        else:
            body.append(line)
    close()
    return samples


def _words(text: str) -> dict[str, Any]:
    """``a=1 b=x`` -> {"a": 1.0, "b": "x"} (numbers where they parse)."""
    found: dict[str, Any] = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if sep:
            try:
                found[key] = float(value)
            except ValueError:
                found[key] = value
    return found


def parse_vmstat(raw: str) -> dict[str, int]:
    """/proc/vmstat: ``name value`` per line."""
    found = {}
    for line in raw.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            found[parts[0]] = int(parts[1])
    return found


def parse_meminfo(raw: str) -> dict[str, int]:
    """/proc/meminfo: ``Name:   value kB`` per line; values in bytes (page counts stay)."""
    found = {}
    for line in raw.splitlines():
        name, sep, rest = line.partition(":")
        parts = rest.split()
        if sep and parts and parts[0].isdigit():
            found[name.strip()] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return found


def parse_psi(raw: str) -> dict[str, dict[str, float]]:
    """/proc/pressure/*: ``some avg10=0.00 avg60=0.00 avg300=0.00 total=123`` (and ``full``);
    averages in per cent, total in microseconds."""
    found = {}
    for line in raw.splitlines():
        kind, _, rest = line.partition(" ")
        if kind in ("some", "full"):
            found[kind] = {k: float(v) for k, v in _words(rest).items()
                           if isinstance(v, float)}
    return found


def parse_keyvalues(raw: str) -> dict[str, Any]:
    """``name value`` lines (zswap's debugfs files and parameters): ints where they parse."""
    found: dict[str, Any] = {}
    for line in raw.splitlines():
        name, _, value = line.strip().partition(" ")
        if not name:
            continue
        value = value.strip()
        found[name] = int(value) if value.lstrip("-").isdigit() else value
    return found


def parse_zram(raw: str) -> dict[str, int]:
    """zram0's ``disksize`` and the columns of ``mm_stat``, ``io_stat`` and ``bd_stat``."""
    found = {}
    for line in raw.splitlines():
        name, _, rest = line.partition(" ")
        values = rest.split()
        if name == "disksize" and values:
            found["disksize"] = int(values[0])
        for column, value in zip(ZRAM_FIELDS.get(name, ()), values, strict=False):
            if value.lstrip("-").isdigit():
                found[column] = int(value)
    return found


def parse_swaps(raw: str) -> list[dict[str, Any]]:
    """/proc/swaps: one entry per swap area (sizes in KiB as the kernel gives them)."""
    entries = []
    for line in raw.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 5:
            entries.append({"name": parts[0], "type": parts[1], "size_kib": int(parts[2]),
                            "used_kib": int(parts[3]), "priority": int(parts[4])})
    return entries


def parse_agent(raw: str) -> dict[str, Any]:
    """The agent's status document (JSON); {} when it is not JSON."""
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


GUEST_PARSERS: dict[str, Any] = {
    "vmstat": parse_vmstat, "meminfo": parse_meminfo, "psi-memory": parse_psi,
    "psi-io": parse_psi, "psi-cpu": parse_psi, "swaps": parse_swaps, "zswap": parse_keyvalues,
    "zswap-params": parse_keyvalues, "zram": parse_zram, "agent": parse_agent,
    "self": parse_keyvalues,
}


def parse_guest(text: str) -> Samples:
    """A guest samples file with every known source parsed (unknown sources stay raw)."""
    raw = split_guest_samples(text)
    parsed = Samples(header=raw.header, end=raw.end)
    for source, entries in raw.by_source.items():
        parser = GUEST_PARSERS.get(source)
        for when, body in entries:
            parsed.add(source, when, parser(body) if parser else body)
    return parsed


# -- the host's file -----------------------------------------------------------------------

def parse_proc_stat(raw: str, clk_tck: int) -> dict[str, float]:
    """/proc/PID/stat: user and system CPU seconds (fields 14 and 15, after the command)."""
    fields = raw[raw.rindex(")") + 2:].split()  # the command may contain spaces
    utime, stime = int(fields[11]), int(fields[12])
    return {"utime_s": utime / clk_tck, "stime_s": stime / clk_tck,
            "cpu_s": (utime + stime) / clk_tck}


def parse_proc_status(raw: str) -> dict[str, int]:
    """/proc/PID/status: resident and peak resident memory in bytes."""
    found = {}
    for line in raw.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found["rss_bytes" if name == "VmRSS" else "hwm_bytes"] = int(rest.split()[0]) * 1024
    return found


def parse_tmemd(raw: dict[str, Any], vm_name: str | None) -> dict[str, Any]:
    """tmemd's ``stats`` reply: the VM's client counters (and the global ones)."""
    clients = raw.get("clients") or []
    mine = next((c for c in clients if c.get("name") == vm_name), clients[0] if clients else {})
    return {"client": mine, "global": raw.get("global", {})}


def parse_host(text: str) -> Samples:
    """A host samples file, every record parsed."""
    samples = Samples()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            if number == len(text.splitlines()):
                break  # a last line cut off when the run stopped
            raise RawFormatError(f"host samples line {number}: {exc}") from None
        if "format" in record:
            samples.header = record
            continue
        source, when, raw = record.get("source"), record.get("t", 0.0), record.get("raw")
        if source == "end":
            samples.end = record
        elif source == "qemu-stat":
            samples.add(source, when, parse_proc_stat(raw, int(samples.header.get("clk_tck",
                                                                                   100))))
        elif source == "qemu-status":
            samples.add(source, when, parse_proc_status(raw))
        elif source == "tmemd":
            samples.add(source, when, parse_tmemd(raw, samples.header.get("vm")))
        else:
            samples.add(str(source), when, raw)
    return samples
