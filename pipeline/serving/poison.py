"""Images that killed a replica, remembered on the node so that sending them again cannot kill another one
(``pipeline.crash_isolation``'s rule, for serving).

A request whose image kills its gateway replica (out-of-memory kill, a crash in a native decoder) cannot get
an answer: the process that knew why is gone, and the proxy answers 500 or closes the connection. A client
that retries would then kill the next replica, and the next. So while a replica preprocesses an image it
notes the image's digest in the node's journal (a small file named after its process); a note left by a process
that no longer exists names an image that killed it. Replicas on the node look for such files (at start, and at most once a
second after), and answer 422 with that reason to any request that holds one of those images.

The files live under the system's temporary folder, one folder per model repository and options, so apps
that score differently do not share verdicts.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.errors import HttpError
from operators._rows import object_array
from operators.base import ERROR
from pipeline.crash_isolation import NodeJournal
from pipeline.graph import Abandoned, Stage
from pipeline.serving.config import ServeConfig

COLLECT_EVERY_S = 1.0


def image_digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class PoisonMemory:
    """The node's record of images that killed a replica of this app (``NodeJournal``, keyed by the image's
    digest), and this replica's notes of the image it decodes."""

    def __init__(self, root: Path) -> None:
        self._journal = NodeJournal(root)
        self._collected_at = 0.0
        self.collect()

    @classmethod
    def for_config(cls, config: ServeConfig) -> PoisonMemory:
        scoring = f"{config.models_dir}\0{config.options.model_dump_json()}".encode()
        name = hashlib.blake2b(scoring, digest_size=8).hexdigest()
        return cls(Path(tempfile.gettempdir()) / "streamscore-poison" / name)

    def collect(self) -> None:
        """Turn the notes of replicas that died into poison records."""
        self._collected_at = time.monotonic()
        self._journal.collect()

    def refuse_known(self, images: Sequence[bytes]) -> list[str]:
        """The images' digests; 422 when one of them killed a replica before."""
        if time.monotonic() - self._collected_at > COLLECT_EVERY_S:
            self.collect()
        digests = [image_digest(image) for image in images]
        for i, digest in enumerate(digests):
            if (verdict := self._journal.verdict(digest)) is not None:
                raise HttpError(422, f"image {i}: worker_crashed: this image {verdict}; it is refused from now on")
        return digests

    def preprocess(
        self, stage: Stage, images: Sequence[bytes], stop: threading.Event
    ) -> tuple[np.ndarray, list[str | None]]:
        """Run ``stage`` on a request's images, one at a time, each noted in this thread's journal file first;
        stop before the next image once ``stop`` is set (the request was given up). Pixels and per-image errors.
        """
        digests = self.refuse_known(images)
        batch = {"id": object_array([str(i) for i in range(len(images))]), "bytes": object_array(list(images))}

        def before_image(i: int) -> None:
            if stop.is_set():
                raise Abandoned(f"the request was given up after {i} of {len(images)} images")
            self._journal.note(digests[i])  # what to blame, should this process die now

        try:
            out = stage(batch, before_image)
        finally:
            self._journal.clear()
        return out["pixels"], list(out[ERROR])
