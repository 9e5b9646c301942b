"""Fixtures shared by the real tests: the guest image, a private libvirtd, VM state dirs.

``vm_state`` also guards against leftovers: after the test, no process may still name the
test's state directory on its command line (a QEMU the test started and failed to stop), and
no libvirt domain named with the harness's prefix may still refer to that directory (checked
when the test used ``libvirt_uri``). A leftover is removed (process killed by its PID, domain
destroyed and undefined) and the test fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.leftovers import kill_leftovers, processes_naming  # noqa: F401 - tests import it

from tmemh.image.build import build_image
from tmemh.image.manifest import ImageManifest
from tmemh.procs import pid_alive
from tmemh.vm.render import DOMAIN_PREFIX

process_alive = pid_alive  # the name the real tests import


def harness_domains_naming(connection: Any, text: str) -> list[Any]:
    """Domains (running or only defined) named ``tmemh-*`` whose XML contains ``text``."""
    return [domain for domain in connection.listAllDomains()
            if domain.name().startswith(DOMAIN_PREFIX) and text in domain.XMLDesc(0)]


def remove_domain(domain: Any) -> None:
    if domain.isActive():
        domain.destroy()
    domain.undefine()


class LibvirtForTests:
    """The module's libvirt daemon: its URI and an open connection."""

    def __init__(self, uri: str) -> None:
        from tmemh.vm.libvirt_backend import open_connection

        self.uri = uri
        self.connection = open_connection(uri)


@pytest.fixture(scope="session")
def guest_image() -> ImageManifest:
    """The guest image for the current inputs (built on first use, then cached)."""
    return build_image()


@pytest.fixture(scope="module")
def libvirt_daemon() -> Iterator[LibvirtForTests]:
    """A libvirt daemon to talk to: the running one, or a private one started for the module
    (starting one takes well under a second once libvirt has cached QEMU's capabilities)."""
    if os.geteuid() != 0:
        pytest.skip("starting libvirtd needs root")
    from support.libvirtd import PrivateLibvirtd

    with PrivateLibvirtd() as uri:
        daemon = LibvirtForTests(uri)
        try:
            yield daemon
        finally:
            daemon.connection.close()


@pytest.fixture
def libvirt_uri(libvirt_daemon: LibvirtForTests) -> str:
    """The URI of the module's libvirt daemon (``vm_state`` then also checks for domains)."""
    return libvirt_daemon.uri


@pytest.fixture
def vm_state(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A private VM state directory; fails the test if a process or domain using it survives."""
    state = tmp_path / "vms"
    yield state
    problems = []
    leftovers = kill_leftovers(str(state))
    if leftovers:
        problems.append(f"processes left running: {leftovers}")
    if "libvirt_uri" in request.fixturenames:
        connection = request.getfixturevalue("libvirt_daemon").connection
        domains = harness_domains_naming(connection, str(state))
        names = [domain.name() for domain in domains]
        for domain in domains:
            remove_domain(domain)
        if names:
            problems.append(f"libvirt domains left defined: {names}")
    assert problems == []
