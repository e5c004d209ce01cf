"""Code that builds the models shipped in ``models/``: every shipped model can be rebuilt from here.

Each builder is ``build(repository: Path, version: str = "1") -> Path`` and writes ``model.onnx``,
``manifest.json`` and ``labels.txt`` into ``<repository>/<name>/<version>/``. Heavy imports (torch) stay
inside the builders so that importing this package costs nothing at run time.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

# name -> "module:function"; resolved lazily so listing builders imports nothing heavy.
BUILDERS: dict[str, str] = {
    "digits": "pipeline.model_builders.digits:build",
    "efficientnet-lite0": "pipeline.model_builders.efficientnet_lite0:build",
    "resnet50-shaped": "pipeline.model_builders.zoo:build_resnet50",
    "mobilenetv2-shaped": "pipeline.model_builders.zoo:build_mobilenetv2",
}


def builder(name: str) -> Callable[[Path, str], Path]:
    """The build function for ``name``; unknown names list the known ones."""
    from common.errors import ConfigError

    if name not in BUILDERS:
        raise ConfigError(f"no builder for model {name!r}; known: {', '.join(sorted(BUILDERS))}")
    module, _, function = BUILDERS[name].partition(":")
    built: Callable[[Path, str], Path] = getattr(importlib.import_module(module), function)
    return built
