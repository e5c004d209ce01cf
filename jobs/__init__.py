"""Entry points: the ``streamscore`` CLI and scripts for ``ray job submit``. The only places that call ray.init."""
