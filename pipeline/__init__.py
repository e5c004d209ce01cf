"""StreamScore's pipeline: the model repository, the operator graph, its executors, the nightly job, serving.

Where to look first:

- ``options`` (``ScoringOptions``), ``graph`` (the one operator graph: build and contract check) and
  ``output`` (the prediction table): what every way of running shares; ``crash_isolation``: what happens
  to a row that kills the process scoring it, in batch runs and in serving alike.
- ``models/``: the repository, what ``NAME`` means, ``models add`` and ``models quantize``.
- ``runs/``: ``streamscore score``: sources, the planner, the local and Ray Data executors, publishing.
- ``nightly/``: ``streamscore nightly``: exactly-once scoring into a Delta table.
- ``serving/``: the Ray Serve app.

Each subpackage's ``__init__`` names its entry points; ``_``-prefixed modules are machinery.
"""
