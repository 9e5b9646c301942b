"""The guest image, built for real from Debian packages, and a minimal boot under QEMU TCG.

The image goes to the shared cache (default_cache_dir()), so later tests and runs reuse it.
Builds that must not touch the shared cache run in a temporary cache that borrows the shared
debootstrap stage and kernel through symlinks.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from tmemh.image.build import build_image, find_image
from tmemh.image.cleanup import mounts_below, remove_tree
from tmemh.image.errors import ImageBuildError
from tmemh.image.manifest import ImageManifest, default_cache_dir
from tmemh.image.options import DEFAULT_AGENT_DIR, ImageOptions

pytestmark = [
    pytest.mark.real,
    pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap and mknod need root"),
]

BOOT_TIMEOUT = 180.0  # seconds; TCG is slow and the machine may be busy
READY_LINE = b"TMEM-GUEST-READY"
AGENT_PORT = "org.tmem.0"


@pytest.fixture(scope="module")
def built() -> tuple[ImageManifest, list[str], float]:
    """The image for the current inputs in the shared cache (built here if missing)."""
    messages: list[str] = []
    started = time.monotonic()
    manifest = build_image(cache_dir=default_cache_dir(), progress=messages.append)
    return manifest, messages, time.monotonic() - started


def test_build_produces_every_file(built: tuple[ImageManifest, list[str], float]) -> None:
    manifest, messages, seconds = built
    print(f"build (or cache hit) took {seconds:.1f} s; steps: {messages}")
    assert manifest.missing_files() == []
    assert manifest.directory.parent == default_cache_dir() / "images"
    assert manifest.directory.name == manifest.key
    assert ImageManifest.load(manifest.directory) == manifest
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(manifest.rootfs)],
                                     stdout=subprocess.PIPE, check=True).stdout)
    assert manifest.kernel.read_bytes()[:4] == b"\x7fELF"  # uncompressed, booted through PVH
    assert info["format"] == "qcow2"
    assert info["virtual-size"] >= 2 * 1024**3
    key = paramiko.Ed25519Key.from_private_key_file(str(manifest.ssh_private_key))
    assert manifest.ssh_public_key.read_text().split()[1] == key.get_base64()
    assert find_image(default_cache_dir()) == manifest


def test_second_build_is_instant(built: tuple[ImageManifest, list[str], float]) -> None:
    manifest = built[0]
    started = time.monotonic()
    again = build_image(cache_dir=default_cache_dir())
    seconds = time.monotonic() - started
    print(f"cached build took {seconds:.2f} s")
    assert again == manifest
    assert seconds < 2.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_line(log: Path, line: bytes, proc: subprocess.Popen, timeout: float) -> float:
    """Seconds until ``line`` shows up in ``log``; fails with the console tail otherwise."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if line in log.read_bytes():
            return time.monotonic() - started
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    tail = log.read_bytes()[-3000:].decode(errors="replace")
    pytest.fail(f"no {line!r} on the console (QEMU exit {proc.poll()}); console tail:\n{tail}")


def read_ssh_banner(port: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                banner = conn.recv(256)
                if banner:
                    return banner
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


@pytest.fixture
def booted(built: tuple[ImageManifest, list[str], float],
           tmp_path: Path) -> Iterator[tuple[ImageManifest, int, float, Path]]:
    """A throwaway QEMU (TCG) running the image on a qcow2 overlay; killed by PID at the end."""
    manifest = built[0]
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                    "-b", str(manifest.rootfs), str(overlay)], check=True)
    port = free_port()
    console = tmp_path / "console.log"
    command = [
        "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-m", "512", "-nographic",
        "-no-reboot", "-kernel", str(manifest.kernel), "-initrd", str(manifest.initramfs),
        "-append", manifest.cmdline, "-drive", f"file={overlay},if=virtio",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=n0,romfile=",
        "-device", "virtio-rng-pci",  # seeds the guest's random pool: sshd starts ~1 s sooner
        "-device", "virtio-serial-pci",
        "-chardev", f"socket,id=agent,path={tmp_path / 'agent.sock'},server=on,wait=off",
        "-device", f"virtserialport,chardev=agent,name={AGENT_PORT}",
    ]
    with console.open("wb") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        seconds = wait_for_line(console, READY_LINE, proc, BOOT_TIMEOUT)
        yield manifest, port, seconds, console
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_image_boots_to_ssh(booted: tuple[ImageManifest, int, float, Path]) -> None:
    manifest, port, seconds, console = booted
    print(f"QEMU start to {READY_LINE.decode()}: {seconds:.1f} s")
    assert read_ssh_banner(port, 60).startswith(b"SSH-2.0-")
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect("127.0.0.1", port=port, username=manifest.ssh_user,
                       key_filename=str(manifest.ssh_private_key), look_for_keys=False,
                       allow_agent=False, timeout=60, banner_timeout=60)
        probe = ("cat /proc/sys/vm/min_free_kbytes; hostname; ip -4 -o addr show eth0;"
                 " python3 -c 'import ctypes, mmap; print(\"stdlib-ok\")';"
                 " test -f /opt/tmem-agent/tmem_agent/__init__.py && echo agent-ok;"
                 " lsmod | grep -c -E '^(nbd|zram) ';"
                 " cat /sys/class/virtio-ports/vport*/name; ls /dev/vport*")
        _, stdout, _ = client.exec_command(probe, timeout=60)
        lines = stdout.read().decode().split("\n")
        # orphans: each shell exits at once, leaving its sleep to PID 1, which must reap it
        _, stdout, _ = client.exec_command(
            "for i in 1 2 3; do sh -c 'sleep 0.2 &'; done; sleep 2;"
            " ps -eo stat=,ppid=,comm= | awk '$1 ~ /^Z/ {print}' | wc -l", timeout=60)
        zombies = stdout.read().decode().strip()
    finally:
        client.close()
    assert lines[0] == "16384"
    assert lines[1] == "tmem-guest"
    assert "10.0.2.15/24" in lines[2]
    assert lines[3:6] == ["stdlib-ok", "agent-ok", "2"]
    assert lines[6] == AGENT_PORT and lines[7].startswith("/dev/vport")
    assert zombies == "0"
    # init starts the agent only when the port exists and the agent service is installed
    agent_started = b"tmem-agent started" in console.read_bytes()
    assert agent_started == (DEFAULT_AGENT_DIR / "service.py").is_file()


def borrow_slow_stages(shared: Path, private: Path) -> None:
    """Let a private cache reuse the shared debootstrap stages and kernels (symlinks)."""
    for sub in ("stages", "kernels"):
        (private / sub).mkdir(parents=True)
        for item in (shared / sub).iterdir():
            (private / sub / item.name).symlink_to(item)


def test_agent_change_rebuilds_fast_and_concurrent_builds_agree(
        built: tuple[ImageManifest, list[str], float], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    borrow_slow_stages(default_cache_dir(), cache)
    agent = tmp_path / "tmem_agent"
    shutil.copytree(DEFAULT_AGENT_DIR, agent, ignore=shutil.ignore_patterns("__pycache__"))
    (agent / "marker.py").write_text(f"BUILT_BY = {str(tmp_path)!r}\n")
    script = ("import sys; from pathlib import Path; from tmemh.image.build import build_image;"
              "from tmemh.image.options import ImageOptions;"
              "m = build_image(ImageOptions(agent_dir=Path(sys.argv[1])),"
              " cache_dir=Path(sys.argv[2]), progress=lambda s: print(s, flush=True));"
              "print('DIR', m.directory)")
    builders: list[subprocess.Popen] = []
    try:
        started = time.monotonic()
        for _ in range(2):
            builders.append(subprocess.Popen([sys.executable, "-c", script, str(agent), str(cache)],
                                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        outputs = [b.communicate(timeout=600)[0].decode() for b in builders]
        seconds = time.monotonic() - started
        print(f"two concurrent builds after an agent change: {seconds:.1f} s\n" +
              "\n".join(outputs))
        assert [b.returncode for b in builders] == [0, 0]
        dirs = {line for out in outputs for line in out.splitlines() if line.startswith("DIR ")}
        assert len(dirs) == 1
        assert sum("debootstrap stage cached" in out for out in outputs) == 1
        assert seconds < 90
        manifest = ImageManifest.load(Path(dirs.pop().split(" ", 1)[1]))
        assert manifest.key != built[0].key
        assert manifest.missing_files() == []
        assert list((cache / "tmp").iterdir()) == []
    finally:
        for builder in builders:  # only if the test failed midway: end them by PID
            if builder.poll() is None:
                builder.kill()
                builder.wait(timeout=30)
        remove_tree(cache)


def test_failed_build_names_the_command_and_leaves_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    unreachable = f"http://127.0.0.1:{free_port()}/debian"
    with pytest.raises(ImageBuildError) as caught:
        build_image(ImageOptions(mirror=unreachable), cache_dir=cache)
    error = caught.value
    print(error)
    assert error.command is not None and error.command[0] == "debootstrap"
    assert error.exit_code not in (None, 0)
    assert error.output_tail
    assert error.__cause__ is not None
    assert list((cache / "tmp").iterdir()) == []
    assert list((cache / "images").iterdir()) == []
    assert list((cache / "stages").iterdir()) == []
    assert mounts_below(cache) == []


def test_missing_root_disk_powers_off_with_a_message(
        built: tuple[ImageManifest, list[str], float], tmp_path: Path) -> None:
    """The initramfs fails fast (QEMU exits) instead of hanging when the root is missing."""
    manifest = built[0]
    console = tmp_path / "console.log"
    command = ["qemu-system-x86_64", "-machine", "q35,accel=tcg", "-m", "256", "-nographic",
               "-no-reboot", "-kernel", str(manifest.kernel), "-initrd", str(manifest.initramfs),
               "-append", manifest.cmdline.replace("root=/dev/vda", "root=/dev/vdz"),
               "-net", "none"]
    with console.open("wb") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        proc.wait(timeout=BOOT_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    text = console.read_bytes().decode(errors="replace")
    assert "initramfs: cannot mount /dev/vdz" in text, text[-2000:]
    assert "virtio_blk" in text
    assert READY_LINE.decode() not in text
