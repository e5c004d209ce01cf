"""A ``score`` run: read a source, run the graph on an executor, publish all-or-nothing Parquet.

Entry points (import them from their modules; this package imports nothing):

- ``sources.detect_source``: folders, globs, URI lists, Parquet datasets of image bytes.
- ``planner.plan_resources``: the layout (fused or split) and actor counts from the cluster's resources.
- ``local.run_locally``: the local executor (child processes, no Ray) for one machine without a GPU.
- ``ray_data.run_batch``: the Ray Data executor (CPU and GPU actors) for a cluster.
- ``publish.publish_run``: one run's output, whichever executor, with ``summary.RunSummary``.
- ``_isolation``, ``_writer``: machinery: ``pipeline.crash_isolation`` on Ray actors; staged Parquet parts.
"""
