"""Traces of the put/get/flush stream between the agent and tmemd (docs/trace.md).

``format`` defines the file (standard library only: the host's ``tmemd replay`` reads it with
the same module), ``reader`` parses it, ``recorder`` writes it from inside the agent and
``options`` has the command-line options of ``tmem-agent run``.
"""
