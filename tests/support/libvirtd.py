"""The private libvirtd for tests: :mod:`tmemh.libvirtd` (moved there so that installed hosts,
e.g. the Ansible host role, can start it too).

This module *is* that module (``sys.modules`` maps the name to it), so tests that patch its
attributes (``monkeypatch.setattr(libvirtd, ...)``) patch the code that runs.
"""

from __future__ import annotations

import sys

from tmemh import libvirtd as _libvirtd

sys.modules[__name__] = _libvirtd
