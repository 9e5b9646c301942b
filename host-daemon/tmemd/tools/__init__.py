"""Tools over the store and the daemon: benchmark, load generator, corpus, stats view, ctl."""
