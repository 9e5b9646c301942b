"""``tmemh libvirtd start|stop|status``: the harness's own libvirt daemons as a service, for
machines where no init system runs (see :mod:`tmemh.libvirtd`).

``start`` returns once libvirt answers (started now, or already answering: a daemon of the
system's own is used as it is); ``stop`` stops only the daemons the harness started, by PID;
``status`` exits 1 when libvirt does not answer. ``--json`` prints one object: ``uri``,
``answering``, ``owned`` (program -> PID of what the harness started) and ``changed``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from tmemh.libvirtd import RUNTIME_DIR, SYSTEM_URI, LibvirtdStatus, PrivateLibvirtd

logger = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "libvirtd", help="start, stop or check the harness's own libvirtd (no init system)",
        description="libvirtd and virtlogd started by the harness, for machines where no init "
                    "system runs; a libvirt that already answers is used as it is.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runtime-dir", type=Path, default=RUNTIME_DIR, metavar="DIR",
                        help=f"PID files, logs and locks (default: {RUNTIME_DIR})")
    common.add_argument("--connect", default=SYSTEM_URI, metavar="URI",
                        help=f"the URI that must answer (default: {SYSTEM_URI})")
    common.add_argument("--json", action="store_true", help="print the result as JSON")
    actions = parser.add_subparsers(dest="libvirtd_command", required=True, metavar="COMMAND")
    for name, func, text in (("start", _start, "start the daemons unless libvirt answers"),
                             ("stop", _stop, "stop the daemons the harness started"),
                             ("status", _status, "does libvirt answer? (exit 1 if not)")):
        actions.add_parser(name, parents=[common], help=text, description=text).set_defaults(
            func=func)


def _helper(args: argparse.Namespace) -> PrivateLibvirtd:
    return PrivateLibvirtd(runtime_dir=args.runtime_dir, uri=args.connect)


def _report(args: argparse.Namespace, status: LibvirtdStatus, text: str) -> None:
    if args.json:
        print(json.dumps(status.as_dict(), sort_keys=True))
    else:
        owned = ", ".join(f"{name} {pid}" for name, pid in sorted(status.owned.items()))
        print(f"libvirtd: {text}" + (f" (started by tmemh: {owned})" if owned else ""))


def _start(args: argparse.Namespace) -> int:
    status = _helper(args).ensure_running()
    _report(args, status, f"started, {status.uri} answers" if status.changed
            else f"{status.uri} already answers")
    return 0


def _stop(args: argparse.Namespace) -> int:
    status = _helper(args).stop_detached()
    _report(args, status, "stopped" if status.changed else "nothing started by tmemh runs")
    return 0


def _status(args: argparse.Namespace) -> int:
    status = _helper(args).status()
    _report(args, status, f"{status.uri} answers" if status.answering
            else f"{status.uri} does not answer")
    return 0 if status.answering else 1
