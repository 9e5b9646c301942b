"""tmem-agent: the in-guest side of tmem. Standard library only (the guest has Debian's python3)."""

__version__ = "0.1.0"
