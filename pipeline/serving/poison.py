"""Images that killed a replica, remembered on the node so that sending them again cannot kill another one.

A request whose image kills its gateway replica (out-of-memory kill, a crash in a native decoder) cannot get
an answer: the process that knew why is gone, and the proxy answers 500 or closes the connection. A client
that retries would then kill the next replica, and the next. So while a replica preprocesses an image it
keeps the image's digest in a small file named after its process; a file left by a process that no longer
exists names an image that killed it. Replicas on the node look for such files (at start, and at most once a
second after), and answer 422 with that reason to any request that holds one of those images.

The files live under the system's temporary folder, one folder per model repository and options, so apps
that score differently do not share verdicts.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.errors import HttpError
from common.processes import process_exists
from operators._rows import object_array
from operators.base import ERROR
from pipeline.graph import Abandoned, Stage
from pipeline.serving.config import ServeConfig

COLLECT_EVERY_S = 1.0


def image_digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class PoisonMemory:
    """The node's record of images that killed a replica of this app, and of what this replica works on."""

    def __init__(self, root: Path) -> None:
        self._working, self._poison = root / "working", root / "poison"
        self._working.mkdir(parents=True, exist_ok=True)
        self._poison.mkdir(parents=True, exist_ok=True)
        self._pid = os.getpid()
        self._thread = threading.local()
        self._collected_at = 0.0
        self.collect()

    @classmethod
    def for_config(cls, config: ServeConfig) -> PoisonMemory:
        scoring = f"{config.models_dir}\0{config.options.model_dump_json()}".encode()
        name = hashlib.blake2b(scoring, digest_size=8).hexdigest()
        return cls(Path(tempfile.gettempdir()) / "streamscore-poison" / name)

    def collect(self) -> None:
        """Turn the working files of processes that died into poison records."""
        self._collected_at = time.monotonic()
        with contextlib.suppress(OSError):
            for entry in os.scandir(self._working):
                owner = entry.name.split("-", 1)[0]
                if not owner.isdigit() or int(owner) == self._pid or process_exists(int(owner)):
                    continue
                pid = int(owner)
                with contextlib.suppress(OSError):
                    digest = Path(entry.path).read_text().strip()
                    if digest:
                        (self._poison / digest).write_text(f"killed the replica process {pid} that decoded it")
                    os.unlink(entry.path)

    def refuse_known(self, images: Sequence[bytes]) -> list[str]:
        """The images' digests; 422 when one of them killed a replica before."""
        if time.monotonic() - self._collected_at > COLLECT_EVERY_S:
            self.collect()
        digests = [image_digest(image) for image in images]
        for i, digest in enumerate(digests):
            with contextlib.suppress(OSError):
                verdict = (self._poison / digest).read_text()
                raise HttpError(422, f"image {i}: worker_crashed: this image {verdict}; it is refused from now on")
        return digests

    def _working_file(self) -> int:
        """This thread's working file, opened once (a create and unlink per request cost 0.3 ms here); made
        again when its folder was removed under us (a temporary-folder cleaner)."""
        fd = getattr(self._thread, "fd", None)
        if fd is not None and os.path.exists(self._thread.path):
            return int(fd)
        if fd is not None:
            os.close(fd)
        self._working.mkdir(parents=True, exist_ok=True)
        self._poison.mkdir(parents=True, exist_ok=True)
        self._thread.path = self._working / f"{self._pid}-{threading.get_ident()}"
        self._thread.fd = os.open(self._thread.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        return int(self._thread.fd)

    def preprocess(
        self, stage: Stage, images: Sequence[bytes], stop: threading.Event
    ) -> tuple[np.ndarray, list[str | None]]:
        """Run ``stage`` on a request's images, one at a time, each noted in this thread's working file first;
        stop before the next image once ``stop`` is set (the request was given up). Pixels and per-image errors.
        Bookkeeping never fails a request: a note that cannot be written is skipped.
        """
        digests = self.refuse_known(images)
        batch = {"id": object_array([str(i) for i in range(len(images))]), "bytes": object_array(list(images))}
        try:
            working: int | None = self._working_file()
        except OSError:
            working = None

        def before_image(i: int) -> None:
            if stop.is_set():
                raise Abandoned(f"the request was given up after {i} of {len(images)} images")
            if working is not None:  # what to blame, should this process die now (digests have one length)
                with contextlib.suppress(OSError):
                    os.pwrite(working, digests[i].encode(), 0)

        try:
            out = stage(batch, before_image)
        finally:
            if working is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(working, 0)
        return out["pixels"], list(out[ERROR])
