"""trillama's benchmark suite: trillama against the engine in process and two peer servers.

Run ``python -m bench`` (or ``make bench``) from the repository root; ``--quick`` for a short run.
See ``docs/benchmarks.md`` for what is measured and why.
"""
