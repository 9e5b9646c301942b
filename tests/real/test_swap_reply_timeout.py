"""A tmemd that stops answering while its stream stays open (here: SIGSTOP): the swap agent
gives the stream up after ``--reply-timeout``, its puts in flight go to the fallback file, its
reads wait, and once tmemd answers again every page reads back right."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from support.daemon import running_daemon
from support.hostagent import read_pipelined, write_pipelined
from support.swapagent import agent_for

pytestmark = pytest.mark.real

PAGE = 4096
REPLY_TIMEOUT = 3


def test_a_daemon_that_stops_answering_is_given_up_and_no_page_is_lost(tmp_path: Path) -> None:
    pages = [os.urandom(16) * (PAGE // 16) for _ in range(96)]
    with running_daemon() as daemon, \
            agent_for(daemon, tmp_path, "--reply-timeout", str(REPLY_TIMEOUT)) as agent:
        nbd = agent.client()
        write_pipelined(nbd, 0, pages[:32], 8)  # in tmem
        os.kill(daemon.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            write_pipelined(nbd, 32, pages[32:], 8)  # answered from the fallback file
            waited = time.monotonic() - started
            stalled = agent.status()
        finally:
            os.kill(daemon.pid, signal.SIGCONT)
        assert REPLY_TIMEOUT <= waited < 30, waited
        assert stalled["counters"]["reply_timeouts"] == 1
        assert not stalled["tmem_connected"]
        assert stalled["refusals"]["disconnected"] == 64
        assert "no reply to request" in agent.log.read_text()
        back = agent.wait_connected(hello="resumed")
        assert back["map"]["tmem"] == 32 and back["map"]["fallback"] == 64
        assert read_pipelined(nbd, 0, len(pages), 8) == pages
        nbd.close()
