"""A cleancache-like second-chance cache for a data disk, in a tmem ephemeral pool, served as
a block device over NBD with the swap shim's machinery (docs/block-cache.md).

Modules: :mod:`.keys` (blocks as cleancache's handles), :mod:`.guard` (the per-block write
epochs that keep stale data out of the pool), :mod:`.diskio` (the disk, O_DIRECT, in worker
threads), :mod:`.pool` (the ephemeral pool: made anew at every connect, reset when its
contents can no longer be trusted), :mod:`.puts` (puts gathered into PUT_BATCH frames),
:mod:`.handler` (NBD requests as gets, puts, flushes and disk I/O), :mod:`.stats`
(counters), :mod:`.device` (the parts put together, as a part of the agent's loop),
:mod:`.service` (``tmem-agent cache``) and :mod:`.embedded` (the same inside the swap agent:
``tmem-agent run --cache-disk``). The /dev/nbdN it is served as is attached by
:mod:`tmem_agent.swap.attach`, as the swap device is.
"""
