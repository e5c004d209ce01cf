"""``streamscore nightly``: score what is new or changed into a Delta Lake table, exactly once.

Entry points (import them from their modules; this package imports nothing):

- ``job.NightlyJob`` and ``job.run_nightly``: freeze, claim, score in shards, commit (the argument is in
  ``job``'s docstring).
- ``scored_table.ScoredTable``: the Delta table, its application transactions and commits.
- ``fingerprints``: what makes an input "changed" (metadata or content).
- ``_shards``: machinery: the resumable shards of a run.
"""
