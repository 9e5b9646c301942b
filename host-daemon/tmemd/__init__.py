"""tmemd: a host-side transcendent memory (tmem) store with zcache semantics."""

PAGE_SIZE = 4096
PAGE_SHIFT = 12

__version__ = "0.1.0"
