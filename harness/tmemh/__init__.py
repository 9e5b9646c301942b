"""tmemh: the tmem test harness (guest images, VMs, SSH, workloads, results, reports)."""

__version__ = "0.1.0"
