"""The model-based test of the tmem rules (test_tmem_model) on a store with dedup on.

Every rule and invariant of :class:`TmemModel` holds unchanged: a get returns exactly the page
last put under its handle (never another handle's content, never the content a later put
replaced), an ephemeral miss needs an eviction, and the charging arithmetic adds up with each
page charged as if it held its copy alone. Besides, after every step the dedup bookkeeping
matches the pools (``Deduplicator.check_invariants``: every entry is a holder of its copy and
every holder an entry, no copy spans clients, savings add up). The model's pages repeat across
handles (and ``flood`` puts five text pages many times), so copies are shared often.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule
from test_tmem_model import PAGES, TmemModel


class DedupTmemModel(TmemModel):
    DEDUP = True

    @precondition(lambda self: any(self.model.values()))
    @rule(data=st.data(), obj=st.integers(0, 1), index=st.integers(0, 3))
    def put_duplicate(self, data: st.DataObject, obj: int, index: int) -> None:
        """Put a page some handle holds under another handle, of any pool of either client
        (a copy to share within the client; across clients or in shared pools, none)."""
        held = sorted({page for entries in self.model.values() for page, _ in entries.values()})
        if not held:
            return
        page = PAGES.index(data.draw(st.sampled_from(held)))
        pools = [(cid, pool_id) for cid in self.clients
                 for pool_id, pool in enumerate(self.store._client(cid).pools) if pool is not None]
        self._put(*data.draw(st.sampled_from(pools)), obj, index, page)


DedupTmemModel.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_dedup_model = DedupTmemModel.TestCase
