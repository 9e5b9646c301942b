"""The guest's page check, run here against a live ``tmemd serve`` over the socket the daemon
made for the VM when it was admitted (as the demo's VM does over virtio-serial)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.daemon import DaemonUnderTest, running_daemon

from tmem_agent.channel.transport import RemoteError, Transport
from tmem_agent.tools.pagecheck import check_pages, guest_pages, passed

pytestmark = pytest.mark.real


@pytest.fixture
def daemon() -> Iterator[DaemonUnderTest]:
    with running_daemon() as d:
        yield d


def test_real_pages_round_trip_through_the_daemon(daemon: DaemonUnderTest) -> None:
    pages = list(guest_pages(1500))
    assert len(pages) == 1500 and pages.count(bytes(4096)) >= 150
    vm_socket = daemon.admit("pagecheck-test")
    with Transport.unix(str(vm_socket)).open() as agent:
        result = check_pages(agent, pages, batch=64, window=4, vm="pagecheck-test")
    assert passed(result), result
    assert result["stored"] > 750  # most real file pages compress below 7/8 of a page
    assert result["status"] == "fresh"
    assert result["daemon_pages"] == result["stored"]  # what the daemon held before the flush
    assert result["compression_ratio"] > 1.2


def test_a_lost_page_fails_the_check(daemon: DaemonUnderTest) -> None:
    pages = list(guest_pages(200))
    vm_socket = daemon.admit("pagecheck-test")
    with Transport.unix(str(vm_socket)).open() as agent:
        result = check_pages(agent, pages, batch=50, window=2, vm="pagecheck-test")
    assert passed(result)
    assert not passed(dict(result, lost=1))
    assert not passed(dict(result, stored=0))


def test_the_check_under_another_name_is_refused_on_an_admitted_socket(
    daemon: DaemonUnderTest,
) -> None:
    vm_socket = daemon.admit("pagecheck-test")
    with Transport.unix(str(vm_socket)).open() as agent, pytest.raises(RemoteError,
                                                                       match="WRONG_VM"):
        check_pages(agent, list(guest_pages(10)), batch=5, window=1, vm="debian")
