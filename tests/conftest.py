"""Shared by every test: ``tests/`` is on the import path, so tests import ``support.*``."""
