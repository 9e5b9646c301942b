"""The control server against a real TmemStore over a real unix socket (asyncio)."""

import asyncio
import json
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from test_control_support import TEXT_PAGE, SmallDaemon, populated_store, socket_dir

from tmemd.service.control import ControlSocketError, start_control_server
from tmemd.store.tmem import TmemStore


class LineClient:
    """A raw JSON-lines client on asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send_raw(self, line: bytes) -> dict[str, Any]:
        self.writer.write(line)
        await self.writer.drain()
        return json.loads(await asyncio.wait_for(self.reader.readline(), 5))

    async def call(self, op: str, request_id: object = 1, **args: Any) -> dict[str, Any]:
        line = json.dumps({"id": request_id, "op": op, **args}).encode() + b"\n"
        return await self.send_raw(line)


Scenario = Callable[[LineClient, SmallDaemon, str], Awaitable[None]]


def run_against_server(scenario: Scenario, store: TmemStore | None = None) -> SmallDaemon:
    daemon = SmallDaemon(store or populated_store())

    async def main() -> None:
        with socket_dir() as directory:
            path = f"{directory}/control.sock"
            server = await start_control_server(path, daemon)
            try:
                reader, writer = await asyncio.open_unix_connection(path)
                try:
                    await scenario(LineClient(reader, writer), daemon, path)
                finally:
                    writer.close()
            finally:
                server.close()
                await server.wait_closed()
            assert not os.path.exists(path), "socket file must be removed on close"

    try:
        asyncio.run(main())
    finally:
        daemon.store.close()
    return daemon


def counters(store: TmemStore) -> dict[str, Any]:
    snapshot = store.stats()
    snapshot.pop("latency_ns")
    return {"global": snapshot, "clients": [store.client_stats(c) for c in store.clients()]}


def test_list_and_stats_report_clients_pools_and_sessions() -> None:
    async def scenario(client: LineClient, daemon: SmallDaemon, path: str) -> None:
        reply = await client.call("list", request_id="a")
        assert reply["ok"] is True and reply["id"] == "a"
        clients = reply["result"]["clients"]
        assert [c["name"] for c in clients] == ["vm1", "vm2"]
        assert [p["kind"] for p in clients[0]["pools"]] == ["persistent", "ephemeral"]
        assert clients[0]["pages"] == 16
        assert reply["result"]["sessions"] == daemon.sessions
        stats = (await client.call("stats"))["result"]
        assert stats["global"]["curr_pers_pages"] == 8
        assert stats["global"]["curr_eph_pages"] == 8
        assert len(stats["clients"]) == 2
        only = (await client.call("stats", client="vm2"))["result"]
        assert [c["name"] for c in only["clients"]] == ["vm2"]
        assert (await client.call("ping"))["result"]["ops"]

    run_against_server(scenario)


def test_limits_quota_freeze_thaw_and_flush_change_the_store() -> None:
    async def scenario(client: LineClient, daemon: SmallDaemon, path: str) -> None:
        store = daemon.store
        reply = await client.call("set_limit", memory_limit="8M")
        assert reply["result"] == {"memory_limit_bytes": 8 << 20}
        assert store.stats()["memory_limit_bytes"] == 8 << 20
        reply = await client.call("set_cap", persistent_cap=2 << 20)
        assert store.stats()["persistent_cap_bytes"] == 2 << 20
        reply = await client.call("set_quota", client="vm2", quota="64K")
        assert reply["result"] == {"client_id": 2, "quota_bytes": 64 << 10}
        assert store.client_stats(2)["quota_bytes"] == 64 << 10
        await client.call("set_quota", client=2, quota=None)
        assert store.client_stats(2)["quota_bytes"] is None

        assert (await client.call("freeze", client="vm1"))["result"]["frozen"] is True
        assert store.put(1, 0, (9, 0, 0), 0, TEXT_PAGE) is False
        await client.call("thaw", client="1")
        assert store.put(1, 0, (9, 0, 0), 0, TEXT_PAGE) is True

        reply = await client.call("flush_client", client="vm1")
        assert reply["result"] == {"client_id": 1, "pages_flushed": 17}
        assert store.client_stats(1)["pages"] == 0
        assert len(store.pools(1)) == 2, "flushing a client keeps its pools"

    run_against_server(scenario)


@pytest.mark.parametrize(
    ("line", "error_type"),
    [
        (b"{not json\n", "BadJson"),
        (b"\xff\xfe\n", "BadJson"),
        (b"[1, 2]\n", "BadRequest"),
        (b'{"id": 5}\n', "BadRequest"),
        (b'{"id": 5, "op": "explode"}\n', "UnknownOp"),
        (b'{"id": 5, "op": "freeze"}\n', "BadRequest"),
        (b'{"id": 5, "op": "freeze", "client": "vm1", "force": true}\n', "BadRequest"),
        (b'{"id": 5, "op": "freeze", "client": "vm9"}\n', "NoSuchClient"),
        (b'{"id": 5, "op": "freeze", "client": 77}\n', "NoSuchClient"),
        (b'{"id": 5, "op": "freeze", "client": [1]}\n', "InvalidArgument"),
        (b'{"id": 5, "op": "set_limit", "memory_limit": "lots"}\n', "InvalidArgument"),
        (b'{"id": 5, "op": "set_limit", "memory_limit": "1G"}\n', "InvalidArgument"),
        (b'{"id": 5, "op": "set_limit", "memory_limit": 0}\n', "InvalidArgument"),
        (b'{"id": 5, "op": "set_cap", "persistent_cap": -4}\n', "InvalidArgument"),
        (b'{"id": 5, "op": "set_quota", "client": "vm1", "quota": "x"}\n', "InvalidArgument"),
        (b"[" * 200_000 + b"]" * 200_000 + b"\n", "BadJson"),  # RecursionError in the parser
        (b'{"op": "ping", "x": ' + b"7" * 5000 + b"}\n", "BadJson"),  # int conversion limit
        (b'{"op": "ping", "x": "\xff\xfe"}\n', "BadJson"),  # not UTF-8 inside a string
        (b"42\n", "BadRequest"),
        (b"null\n", "BadRequest"),
        (b'"ping"\n', "BadRequest"),
        (b'{"id": 5, "op": "list", "limit": 0}\n', "InvalidArgument"),
        (b'{"id": 5, "op": "list", "limit": 1001}\n', "InvalidArgument"),
        (b'{"id": 5, "op": "stats", "offset": -1}\n', "InvalidArgument"),
        (b'{"id": 5, "op": "stats", "offset": true}\n', "InvalidArgument"),
        (b'{"id": 5, "op": "admit", "vm": "../etc"}\n', "InvalidArgument"),
        (b'{"id": 5, "op": "admit", "vm": "vm1", "owner": [0]}\n', "InvalidArgument"),
        (b'{"id": 5, "op": "admit"}\n', "BadRequest"),
        (b'{"id": 5, "op": "dismiss", "vm": "vm1"}\n', "NotAdmitted"),
        (b'{"id": 5, "op": "share_allow", "vm": "vm1", "uuid": "xyz"}\n', "InvalidArgument"),
        (b'{"id": 5, "op": "share_allow", "vm": "vm1", "uuid": "' + b"0" * 32 + b'"}\n',
         "InvalidArgument"),
        (b'{"id": 5, "op": "share_deny", "vm": "a b", "uuid": "' + b"1" * 32 + b'"}\n',
         "InvalidArgument"),
    ],
)
def test_bad_requests_get_an_error_change_nothing_and_keep_the_connection(
    line: bytes, error_type: str
) -> None:
    async def scenario(client: LineClient, daemon: SmallDaemon, path: str) -> None:
        before = counters(daemon.store)
        reply = await client.send_raw(line)
        assert reply["ok"] is False
        assert reply["error"]["type"] == error_type, reply
        assert reply["error"]["message"]
        if line.startswith(b'{"id": 5'):
            assert reply["id"] == 5
        assert counters(daemon.store) == before
        assert (await client.call("ping", request_id=6))["ok"] is True

    daemon = run_against_server(scenario)
    assert daemon.shutdown_requests == 0


def test_shutdown_replies_then_asks_the_daemon_to_stop() -> None:
    async def scenario(client: LineClient, daemon: SmallDaemon, path: str) -> None:
        reply = await client.call("shutdown")
        assert reply == {"id": 1, "ok": True, "result": {"shutting_down": True}}

    assert run_against_server(scenario).shutdown_requests == 1


def test_socket_is_private_and_blank_lines_are_ignored() -> None:
    async def scenario(client: LineClient, daemon: SmallDaemon, path: str) -> None:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        reply = await client.send_raw(b'\n  \n{"id": 2, "op": "ping"}\n')
        assert reply["id"] == 2 and reply["ok"]

    run_against_server(scenario)


def test_overlong_request_is_refused_and_skipped() -> None:
    async def scenario(client: LineClient, daemon: SmallDaemon, path: str) -> None:
        for size in (2 << 20, (1 << 20) + 10):
            reply = await client.send_raw(b'{"op": "ping", "pad": "' + b"x" * size + b'"}\n')
            assert reply["error"]["type"] == "BadRequest"
            assert "over" in reply["error"]["message"]
            assert (await client.call("ping", request_id=3))["id"] == 3

    run_against_server(scenario)


def test_stale_socket_is_replaced_but_live_socket_and_other_files_are_refused() -> None:
    daemon = SmallDaemon(populated_store(1))

    async def main() -> None:
        with socket_dir() as directory:
            stale = f"{directory}/stale.sock"
            leftover = socket.socket(socket.AF_UNIX)
            leftover.bind(stale)
            leftover.close()  # the file stays, nobody listens
            server = await start_control_server(stale, daemon)
            try:
                with pytest.raises(ControlSocketError, match="in use"):
                    await start_control_server(stale, daemon)
            finally:
                server.close()
                await server.wait_closed()
            regular = f"{directory}/notes.txt"
            with open(regular, "w") as stream:
                stream.write("keep me")
            with pytest.raises(ControlSocketError, match="not a socket"):
                await start_control_server(regular, daemon)
            with open(regular) as stream:
                assert stream.read() == "keep me"

    try:
        asyncio.run(main())
    finally:
        daemon.store.close()


def test_closing_the_server_ends_open_connections() -> None:
    daemon = SmallDaemon(populated_store(1))

    async def main() -> None:
        with socket_dir() as directory:
            path = f"{directory}/control.sock"
            server = await start_control_server(path, daemon)
            reader, writer = await asyncio.open_unix_connection(path)
            try:
                assert (await LineClient(reader, writer).call("ping"))["ok"]
                server.close()
                await asyncio.wait_for(server.wait_closed(), 5)
                assert await asyncio.wait_for(reader.read(), 5) == b""
                assert not os.path.exists(path)
            finally:
                writer.close()

    try:
        asyncio.run(main())
    finally:
        daemon.store.close()


def test_a_request_id_too_deep_to_encode_still_gets_a_reply() -> None:
    async def scenario(client: LineClient, daemon: SmallDaemon, path: str) -> None:
        deep = b"[" * 5000 + b"]" * 5000
        reply = await client.send_raw(b'{"id": ' + deep + b', "op": "ping"}\n')
        assert reply["ok"] is False and reply["id"] is None
        assert (await client.call("ping", request_id=2))["ok"] is True

    run_against_server(scenario)


def test_listings_come_in_pages_with_totals() -> None:
    store = populated_store()
    for n in range(248):
        store.new_client(f"extra{n}")

    async def scenario(client: LineClient, daemon: SmallDaemon, path: str) -> None:
        first = (await client.call("list"))["result"]
        assert (first["offset"], first["limit"], first["total_clients"]) == (0, 100, 250)
        assert len(first["clients"]) == 100 and first["clients"][0]["name"] == "vm1"
        assert first["total_sessions"] == 1 and len(first["sessions"]) == 1
        last = (await client.call("list", offset=200, limit=100))["result"]
        assert [c["name"] for c in last["clients"]][-1] == "extra247"
        assert len(last["clients"]) == 50 and last["sessions"] == []
        past = (await client.call("list", offset=1000))["result"]
        assert past["clients"] == [] and past["total_clients"] == 250
        stats = (await client.call("stats", offset=10, limit=5))["result"]
        assert [c["client_id"] for c in stats["clients"]] == [11, 12, 13, 14, 15]
        assert stats["total_clients"] == 250 and stats["global"]["clients"] == 250
        one = (await client.call("stats", client="vm2", limit=1))["result"]
        assert [c["name"] for c in one["clients"]] == ["vm2"] and one["total_clients"] == 1

    run_against_server(scenario, store)


def test_share_allow_and_deny_change_only_the_registry() -> None:
    uuid = "0123456789abcdef0123456789abcdef"

    async def scenario(client: LineClient, daemon: SmallDaemon, path: str) -> None:
        before = counters(daemon.store)
        reply = await client.call("share_allow", vm="vm1", uuid=uuid.upper())
        assert reply["result"] == {"vm": "vm1", "uuid": uuid, "allowed": True}
        assert daemon.registry.may_share("vm1", bytes.fromhex(uuid))
        listed = (await client.call("list"))["result"]
        assert listed["vms"] == [{"vm": "vm1", "admitted": False, "owner": None,
                                  "socket": None, "shared_uuids": [uuid]}]
        assert listed["total_vms"] == 1
        reply = await client.call("share_deny", vm="vm1", uuid=uuid)
        assert reply["result"]["was_allowed"] is True
        assert not daemon.registry.may_share("vm1", bytes.fromhex(uuid))
        assert counters(daemon.store) == before

    run_against_server(scenario)
