"""A VM's admission to tmemd: its own port, and its tools' ports, all for QEMU's uid.

Identity comes from the host (docs/trust-model.md): before QEMU starts, the VM is admitted
under its name, and tmemd makes a socket that only QEMU's uid may connect to; the guest's
port ``org.tmem.0`` is wired to it, and ``tmem.vm=NAME`` on the kernel command line tells the
guest the name it was admitted under. Each :class:`~.spec.TmemToolPort` is admitted the same
way as a client of its own, ``NAME`` plus its suffix. Admitting is all or nothing, and
dismissing is best effort (a daemon that is gone is reported, not raised).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from tmemd.service.controlclient import ControlError, ControlRequestError
from tmemh.daemon import admit_vm, dismiss_vm

from .errors import TmemUnavailable
from .spec import ChannelSpec, VMSpec

TMEM_PORT = "org.tmem.0"  # the port the guest's init starts `tmem-agent run` on


def admit(control: Path, spec: VMSpec, uid: int) -> tuple[VMSpec, dict[str, Any]]:
    """Admit ``spec``'s VM and its tool ports to the tmemd at ``control`` for ``uid``.

    Returns the spec with the ports wired (the tool ports made channels) and the admission
    as the VM's record keeps it. On a refusal nothing stays admitted."""
    admitted: list[str] = []
    channels: list[ChannelSpec] = []
    try:
        for port, client in [(TMEM_PORT, spec.name)] + [
                (t.port, spec.name + t.client_suffix) for t in spec.tmem_tool_ports]:
            channels.append(ChannelSpec(port, admit_vm(control, client, owner=uid), "connect"))
            admitted.append(client)
    except ControlError as exc:
        for client in admitted:
            _dismiss_one(control, client)
        raise TmemUnavailable(f"tmemd at {control} did not admit {spec.name}"
                              f"{'' if not admitted else ' fully'}: {exc}") from exc
    admission = {"control": str(control), "socket": str(channels[0].socket_path),
                 "port": TMEM_PORT, "owner_uid": uid,
                 "clients": {c.name: name for c, name in zip(channels, admitted, strict=True)}}
    wired = replace(spec, channels=(*spec.channels, *channels), tmem_tool_ports=(),
                    kernel_args=(*spec.kernel_args, f"tmem.vm={spec.name}"))
    return wired, admission


def dismiss(admission: dict[str, Any], vm: str) -> str:
    """Dismiss every client of the admission; what happened, in one line."""
    control = admission["control"]
    clients = list((admission.get("clients") or {TMEM_PORT: vm}).values())
    outcomes = [_dismiss_one(control, client) for client in clients]
    failed = [o for o in outcomes if o]
    return failed[0] if failed else f"dismissed from tmemd at {control}"


def _dismiss_one(control: str | Path, client: str) -> str:
    """'' when dismissed, else why not."""
    try:
        dismiss_vm(control, client)
        return ""
    except ControlRequestError as exc:
        return f"tmemd at {control}: {exc}"
    except ControlError as exc:
        return f"not dismissed, tmemd unreachable: {exc}"
