"""The guest's workload program, run on the host with tiny sizes: reports, verification, a
corrupted archive found (exit 1), a missing setup (exit 3), bad parameters (exit 2)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tmemh.suite.guest import sysinfo, uffd_beside
from tmemh.suite.guest.main import main

GUEST_MEMORY = 32 << 20


@pytest.fixture(autouse=True)
def small_guest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sizes as in a 32 MiB guest; the host's page cache is left alone."""
    monkeypatch.setattr(sysinfo, "mem_total_bytes", lambda: GUEST_MEMORY)
    monkeypatch.setattr(sysinfo, "mem_available_bytes", lambda: GUEST_MEMORY // 2)
    monkeypatch.setattr(sysinfo, "sync_and_drop_caches", lambda: None)


def phase(capsys: pytest.CaptureFixture[str], *args: str,
          params: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    code = main([*args, "--params", json.dumps(params or {})])
    lines = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(lines[-1]) if lines else {}


def test_tar_extracts_and_verifies_every_file(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    work = str(tmp_path)
    params = {"scale": 0.25, "files_per_mib": 10, "ballast": 0.5}
    code, setup = phase(capsys, "setup", "tar", "--workdir", work, params=params)
    assert code == 0 and setup["files"] > 300 and setup["bytes"] > 4 << 20
    code, report = phase(capsys, "run", "tar", "--workdir", work, params=params)
    assert code == 0 and report["verified"] is True
    assert report["workload"] == "tar" and report["files"] == setup["files"]
    assert set(report["phases"]) == {"extract_s", "verify_s", "ballast_fill_s",
                                     "ballast_verify_s"}
    assert report["time_s"] >= report["phases"]["extract_s"]
    assert report["ballast"]["bad_pages"] == 0
    assert report["ballast"]["pages"] == 2048  # half of the 16 MiB available
    assert set(report["vmstat"]) >= {"pswpin", "pswpout"}


def test_a_corrupted_archive_member_is_a_verification_failure(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = str(tmp_path)
    params = {"scale": 0.1, "files_per_mib": 4, "ballast": 0}
    assert phase(capsys, "setup", "tar", "--workdir", work, params=params)[0] == 0
    archive = tmp_path / "src.tar"
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.isfile() and m.size > 100)
    data = bytearray(archive.read_bytes())
    data[member.offset_data + 50] ^= 0xFF
    archive.write_bytes(bytes(data))
    code, report = phase(capsys, "run", "tar", "--workdir", work, params=params)
    assert code == 1 and report["verified"] is False
    assert report["verification"]["bad_files"] == 1
    assert member.name.removeprefix("tree/") in report["verification"]["first_bad"][0]


def test_anon_fills_and_verifies_realistic_and_random_pages(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for kind in ("realistic", "random"):
        code, report = phase(capsys, "run", "anon", "--workdir", str(tmp_path),
                             params={"scale": 0.5, "pages": kind})
        assert code == 0 and report["verified"] and report["kind"] == kind
        assert report["pages"] == GUEST_MEMORY // 2 // 4096
        assert report["verification"]["bad_pages"] == 0


def test_anon_runs_memhog_beside_only_where_its_port_is(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    code, report = phase(capsys, "run", "anon", "--workdir", str(tmp_path),
                         params={"scale": 0.25, "uffd": 8})
    assert code == 0 and report["verified"] and "no port org.tmem.uffd" in \
        report["uffd"]["skipped"]  # not a tmem cell: nothing runs, nothing fails
    calls: list[list[str]] = []

    def memhog(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        out = {"faults": 2100, "faults_per_s": 700.0, "pages_per_s": 680.0, "lost_pages": 0,
               "verify": {"passed": False}, "phases": {"write": {"seconds": 1.0}}}
        return subprocess.CompletedProcess(argv, 1, json.dumps(out) + "\n", "bad page 3")

    monkeypatch.setattr(uffd_beside, "port_present", lambda name=uffd_beside.PORT: True)
    monkeypatch.setattr(uffd_beside.subprocess, "run", memhog)
    code, report = phase(capsys, "run", "anon", "--workdir", str(tmp_path),
                         params={"scale": 0.25, "uffd": 8})
    assert calls[0][:8] == ["tmem-agent", "memhog", "--size", "8M", "--resident", "2M",
                            "--verify", "--port"]
    assert calls[0][-2:] == ["--vm", uffd_beside.vm_name() + "-uffd"]
    assert report["uffd"]["faults_per_s"] == 700.0 and report["uffd"]["passed"] is False
    assert code == 1 and not report["verified"]  # a wrong page in the region fails the run
    code, report = phase(capsys, "run", "anon", "--workdir", str(tmp_path),
                         params={"scale": 0.25, "uffd": 8, "uffd_resident": 8})
    assert code == 3 and "uffd_resident must be" in report["error"]


def test_the_region_says_hello_in_the_name_the_host_gave_the_vm(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyS0 tmem.vm=s1-000 quiet\n")
    assert uffd_beside.vm_name(str(cmdline)) == "s1-000"
    cmdline.write_text("console=ttyS0\n")
    assert uffd_beside.vm_name(str(cmdline)) == socket.gethostname()


def test_pagecache_reads_the_set_each_pass(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    params = {"scale": 0.75, "passes": 2}
    code, setup = phase(capsys, "setup", "pagecache", "--workdir", str(tmp_path), params=params)
    assert code == 0 and setup["files"] == 2
    code, report = phase(capsys, "run", "pagecache", "--workdir", str(tmp_path), params=params)
    assert code == 0 and report["bytes"] == 2 * setup["bytes"]
    assert set(report["phases"]) == {"pass1_s", "pass2_s"} and "ballast" not in report


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed here")
def test_rsync_copies_and_compares(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = {"scale": 0.2, "files_per_mib": 5, "ballast": 0.2}
    assert phase(capsys, "setup", "rsync", "--workdir", str(tmp_path), params=params)[0] == 0
    code, report = phase(capsys, "run", "rsync", "--workdir", str(tmp_path), params=params)
    assert code == 0 and report["verified"] and "rsync_s" in report["phases"]


def test_a_run_without_its_setup_breaks_with_exit_3(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, report = phase(capsys, "run", "tar", "--workdir", str(tmp_path))
    assert code == 3 and "FileNotFoundError" in report["error"]


def test_bad_parameters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "anon", "--workdir", str(tmp_path), "--params", "[1]"]) == 2
    code, report = phase(capsys, "run", "anon", "--workdir", str(tmp_path),
                         params={"pages": "zeros"})
    assert code == 3 and "pages must be one of" in report["error"]
