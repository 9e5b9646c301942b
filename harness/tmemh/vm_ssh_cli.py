"""``tmemh vm ssh|cp|ssh-config``: reach a running VM the way ssh, scp and ssh_config do.

``vm ssh NAME -- CMD`` passes stdin through, streams stdout and stderr live and apart, and
exits with the remote status (255 when the connection fails or the command dies of a signal,
as ssh; 124 after ``--timeout``, as timeout(1); 130 on Ctrl-C, which stops the remote
command). ``vm ssh NAME`` is an interactive shell on a remote pty. ``vm cp`` copies like
``scp -r`` with ``NAME:PATH`` on one side. ``vm ssh-config`` prints OpenSSH ``Host`` blocks
for the user's own ssh, scp and rsync.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from tmemd.clikit import CliParser, UsageError, report_error
from tmemh.ssh import SSHCommandTimeout, SSHConnectError, SSHKeyError
from tmemh.vm import VirtualMachine, reap_stale
from tmemh.vm.state import StateDir

logger = logging.getLogger(__name__)

PROG = "tmemh"
EXIT_SSH_FAILED = 255  # as ssh(1): the connection failed, or no exit status came
EXIT_TIMED_OUT = 124  # as timeout(1)
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for ssh killed by a closed pipe


def add_parsers(actions: argparse._SubParsersAction) -> None:
    """Register ``ssh``, ``cp`` and ``ssh-config`` under ``tmemh vm``."""
    ssh = actions.add_parser(
        "ssh", help="run a command in the VM, or a shell: vm ssh NAME [-- CMD]",
        usage="tmemh vm ssh [-h] [--timeout S] [-n] [-t] NAME [[--] CMD ...]",
        description="Like ssh(1): with a command, stdin is passed through and stdout/stderr "
                    "stream live; without one, an interactive shell on a remote terminal.",
        epilog="exit status: the remote command's; 255 if the connection fails (or the "
               "command dies of a signal), 124 after --timeout, 130 on Ctrl-C (the remote "
               "command is stopped too)")
    ssh.add_argument("name", help="the VM's name")
    _add_ssh_options(ssh)
    ssh.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD",
                     help="the command (after -- when it could be taken for options); its "
                          "words are joined by spaces and run by the guest's shell, as ssh "
                          "does. Options may also follow NAME")
    ssh.set_defaults(func=_ssh)

    copy = actions.add_parser(
        "cp", help="copy files and trees to or from a VM: vm cp SRC... DEST (NAME:PATH on "
                   "one side)",
        usage="tmemh vm cp [-h] [-r] SRC... DEST",
        description="Like scp -r: NAME:PATH names a path in VM NAME (NAME: alone or NAME:~/x "
                    "is the login directory); directories are copied recursively, permission "
                    "bits kept. Sources go into DEST when it is a directory.")
    copy.add_argument("-r", "--recursive", action="store_true",
                      help="accepted for scp's sake: directories are always copied whole")
    copy.add_argument("paths", nargs="+", metavar="PATH", help="SRC... DEST")
    copy.set_defaults(func=_cp)

    config = actions.add_parser(
        "ssh-config", help="print OpenSSH config for VMs: ssh -F <(tmemh vm ssh-config NAME) "
                           "NAME",
        description="OpenSSH 'Host NAME' blocks, for ssh -F, scp -F and rsync -e 'ssh -F ...'.")
    config.add_argument("names", nargs="*", metavar="NAME",
                        help="the VMs (default: every running VM)")
    config.set_defaults(func=_ssh_config)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the timeout must be positive")
    return value


def _add_ssh_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=_seconds, default=None, metavar="S",
                        help="stop the command after S seconds (default: no limit)")
    parser.add_argument("-n", "--no-stdin", action="store_true",
                        help="do not read stdin: the command reads EOF (ssh -n)")
    parser.add_argument("-t", "--tty", action="store_true",
                        help="run the command on a remote terminal when stdin is one (ssh -t)")


# Options given after NAME land in the command's remainder; this parser reads them there.
_LATE_OPTIONS = CliParser(prog="tmemh vm ssh", add_help=False)
_add_ssh_options(_LATE_OPTIONS)
_VALUE_OPTIONS = ("--timeout",)


# -- vm ssh ---------------------------------------------------------------------------------

def command_words(args: argparse.Namespace) -> list[str]:
    """The command's words; options between NAME and the command are applied to ``args``.

    As with ssh, options may follow NAME (``vm ssh NAME --timeout 5 -- CMD``); they end at
    ``--`` or at the first word that is neither an option nor an option's value. A command
    that does not start with ``-`` needs no ``--`` (``vm ssh NAME ls -l``).
    """
    remainder: list[str] = list(args.command)
    if remainder[:1] == ["--"]:  # argparse keeps or drops this one, depending on its version
        return remainder[1:]
    cut = 0
    while cut < len(remainder) and remainder[cut].startswith("-") and remainder[cut] != "-":
        if remainder[cut] == "--":
            break
        cut += 2 if remainder[cut] in _VALUE_OPTIONS else 1
    options, words = remainder[:cut], remainder[cut:]
    if words[:1] == ["--"]:
        words = words[1:]
    if options:
        late = _LATE_OPTIONS.parse_args(options)
        for key, value in vars(late).items():
            if value not in (None, False):
                setattr(args, key, value)
    return words


def _ssh(args: argparse.Namespace) -> int:
    words = command_words(args)
    vm = VirtualMachine.attach(args.name, args.state_dir)  # VMNotFound: exit 1
    # Like ssh(1): the words go to the guest's shell joined by spaces (`-- "exit 7"` works).
    command = " ".join(words) if words else None
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        guest = vm.ssh()
        if command is None or (args.tty and os.isatty(0)):
            status = guest.shell(command)
        else:
            stdin = None if args.no_stdin or sys.stdin is None else sys.stdin.buffer
            status = guest.execute(command, stdin=stdin,
                                   stdout=sys.stdout.buffer, stderr=sys.stderr.buffer,
                                   timeout=args.timeout).exit_code
    except (SSHConnectError, SSHKeyError) as exc:
        report_error(PROG, exc, verbose=args.verbose)
        return EXIT_SSH_FAILED
    except SSHCommandTimeout as exc:
        report_error(PROG, exc, verbose=args.verbose)
        return EXIT_TIMED_OUT
    except BrokenPipeError:  # our stdout was closed (`... | head`): the command was stopped
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    if status is None:
        logger.debug("%s ended without an exit status (killed by a signal?)", command)
        return EXIT_SSH_FAILED
    return status


def _silence_stdout() -> None:
    """Point stdout at /dev/null so flushing it at exit does not fail a second time."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


# -- vm cp ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class CopyPlan:
    """A parsed ``vm cp``: which VM, which way, what from, where to."""

    vm: str
    to_guest: bool
    sources: tuple[str, ...]
    dest: str


def split_target(text: str) -> tuple[str | None, str]:
    """``NAME:PATH`` -> (NAME, PATH); a local path -> (None, text).

    scp's rule: a colon before any slash makes a remote path, so ``./a:b`` and ``/x:y`` are
    local files; a leading colon is local too.
    """
    colon = text.find(":")
    if colon <= 0 or "/" in text[:colon]:
        return None, text
    return text[:colon], text[colon + 1:]


def parse_copy(paths: list[str]) -> CopyPlan:
    """``SRC... DEST`` with ``NAME:PATH`` on exactly one side, one VM; else UsageError."""
    if len(paths) < 2:
        raise UsageError("vm cp: give at least a source and a destination: vm cp SRC... DEST")
    *sources, dest = paths
    dest_vm, dest_path = split_target(dest)
    split = [split_target(s) for s in sources]
    source_vms = {vm for vm, _ in split}
    if dest_vm is not None:
        if source_vms != {None}:
            raise UsageError("vm cp: one side must be a local path (no VM-to-VM copies)")
        return CopyPlan(dest_vm, True, tuple(sources), dest_path)
    if source_vms == {None}:
        raise UsageError("vm cp: NAME:PATH is needed on one side (the sources or the "
                         "destination)")
    if None in source_vms:
        raise UsageError("vm cp: sources must be all local or all NAME:PATH")
    if len(source_vms) > 1:
        names = ", ".join(sorted(str(vm) for vm in source_vms))
        raise UsageError(f"vm cp: sources name several VMs ({names}); copy from one at a time")
    return CopyPlan(split[0][0] or "", False, tuple(path for _, path in split), dest)


def _cp(args: argparse.Namespace) -> int:
    plan = parse_copy(args.paths)
    vm = VirtualMachine.attach(plan.vm, args.state_dir)
    if plan.to_guest:
        vm.upload([Path(s) for s in plan.sources], plan.dest)
    else:
        vm.download(list(plan.sources), Path(plan.dest))
    return 0


# -- vm ssh-config --------------------------------------------------------------------------

def _ssh_config(args: argparse.Namespace) -> int:
    states = StateDir(args.state_dir)
    if args.names:
        vms = [VirtualMachine.attach(name, args.state_dir) for name in args.names]
    else:
        reap_stale(states)
        vms = [VirtualMachine.attach(name, args.state_dir) for name in states.names()]
    print("\n".join(vm.ssh_config() for vm in vms), end="")
    return 0
