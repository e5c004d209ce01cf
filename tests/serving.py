"""Helpers of the serving tests: the served repository, the app's settings, and HTTP calls as JSON."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

MODEL = "efficientnet-lite0"
EMBED_MODEL = "efficientnet-lite0-embed"
ADMIN_TOKEN = "test-admin-token"
# digits: 80/20 between versions 1 and 2, version 3 at weight 0, X-Region: cn -> 2, sticky by X-User.
ROUTING = {
    "digits": {
        "weights": {"1": 80, "2": 20, "3": 0},
        "rules": [{"header": "X-Region", "equals": "cn", "version": "2"}],
        "sticky_header": "X-User",
    }
}


def make_served_repository(root: Path, models_dir: Path) -> Path:
    """EfficientNet-Lite0, its embedding model, and four versions of digits (same weights; version 4 a broken
    upload)."""
    shutil.copytree(models_dir / MODEL, root / MODEL)
    shutil.copytree(models_dir / EMBED_MODEL, root / EMBED_MODEL)
    for version in ("1", "2", "3", "4"):
        shutil.copytree(models_dir / "digits" / "1", root / "digits" / version)
        manifest = json.loads((root / "digits" / version / "manifest.json").read_text())
        (root / "digits" / version / "manifest.json").write_text(json.dumps(manifest | {"version": version}))
    (root / "digits" / "4" / "model.onnx").write_bytes(b"a broken upload, not an ONNX model")
    return root


def request_json(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None, method: str | None = None
) -> tuple[int, Any, dict]:
    """(status, headers (case-insensitive), JSON body)."""
    method = method or ("POST" if body is not None else "GET")
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.loads(error.read())
