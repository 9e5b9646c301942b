"""What the suite runs inside a guest: workloads, their data and the sampling loop.

Standard library only (the guest has Debian's python3 and nothing else); the host never
imports these modules to run them, it copies this package into the guest
(:mod:`tmemh.suite.guestcode`) and starts ``python3 -m tmemh_guest.main`` or
``python3 -m tmemh_guest.monitor`` there. Host-side tests import the pure parts (the data
generator, the tree plan) to check them, and the host takes the names both sides must agree
on from here (the userfaultfd port of :mod:`.uffd_beside`).
"""
