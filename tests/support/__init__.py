"""Helpers used only by the tests: a private libvirtd, tmemd with test-only controls, the agent
as a host process, swapping guests, Ansible playbook runs."""
