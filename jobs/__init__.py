"""Entry points: the ``streamscore`` CLI and scripts for ``ray job submit``. The only places that call ray.init."""

import time

# The first thing a command does (``streamscore`` and every ``python -m jobs....`` import this package first):
# where its wait starts. See ``jobs.console.process_started_at``.
IMPORTED_AT = time.perf_counter()
CPU_S_AT_IMPORT = time.process_time()
