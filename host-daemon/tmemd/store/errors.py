"""Exceptions raised by the tmem store.

Every error raised for bad input is raised *before* anything is changed, so a caller that
catches a :class:`TmemError` can rely on the store being exactly as it was.
"""


class TmemError(Exception):
    """Base class of every error the tmem store raises on purpose."""


class InvalidArgument(TmemError, ValueError):
    """A request is malformed: wrong page size, index or oid out of range, bad flags."""


class NoSuchClient(TmemError, KeyError):
    """The client id is not known to the store."""


class NoSuchPool(TmemError, KeyError):
    """The pool id is not in use by the client."""


class TooManyPools(TmemError):
    """The client already has the maximum number of pools."""


class TooManyClients(TmemError):
    """The store already has its configured maximum number of clients."""


class ConfigError(TmemError, ValueError):
    """A configuration value is invalid."""
