"""Helpers used only by the tests: a private libvirtd, and tmemd with test-only controls."""
