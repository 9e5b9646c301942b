"""One-shot tools run in the guest (pagecheck)."""
