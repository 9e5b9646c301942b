"""The swap shim: an NBD server in the guest whose pages live in host tmem, with a disk fallback.

Modules: :mod:`.nbdproto` (the NBD wire format and the server's side of the handshake),
:mod:`.nbdconn` (one transmission-phase connection), :mod:`.locmap` (which copy of a page is
current), :mod:`.fallback` (the fallback file), :mod:`.tmemlink` (the connection to tmemd),
:mod:`.shim` (NBD requests as tmem puts, gets and flushes), :mod:`.loop` (the event loop),
:mod:`.netlink` (the kernel's NBD netlink interface), :mod:`.attach` (an agent's /dev/nbdN
attached, and connected again after a restart: the swap device and the block cache's),
:mod:`.swapon` (the same for the swap device, with mkswap and swapon), :mod:`.hardening` (what
keeps the server running under memory pressure) and :mod:`.stats` (counters for
``tmem-agent status``).
"""
