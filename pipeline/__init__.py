"""StreamScore's pipeline: the model repository, the operator graph, its executors, the nightly job, serving.

By concept (where to look first):

- **models**: ``model_ref`` (``NAME[:VERSION]``), ``manifest`` (how to feed a version), ``models`` (the
  repository and what ``NAME`` means), ``default_version`` (the promoted default), ``onnx_graph`` (what an
  ONNX file asks for), ``model_add`` (``models add``), ``quantize`` (``models quantize``).
- **runs** (``score``): ``options`` (``ScoringOptions``), ``graph`` (build and contract check), ``planner``
  (layouts from resources), ``sources`` (folders, globs, URI lists, Parquet), ``local_scoring`` (the local
  executor), ``batch`` (Ray Data), ``isolation`` (rows that kill their worker), ``publish``, ``writer``,
  ``output``, ``run_summary``.
- **nightly**: ``nightly`` (the job), ``scored_table`` (exactly-once Delta commits), ``shards``,
  ``fingerprints``.
- **serving**: the ``serving`` subpackage (its ``__init__`` says more).
"""
