"""The node's memory of images that killed a replica: real files, a real process that exited."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from common.errors import HttpError
from pipeline.graph import Stage, build_graph
from pipeline.serving.poison import PoisonMemory, image_digest


def _stage(repository) -> Stage:  # type: ignore[no-untyped-def]
    return Stage(preprocess=build_graph("digits", repository).preprocess)


def test_an_image_left_in_the_working_file_of_a_dead_process_is_refused(
    tmp_path: Path, repository, digit_files
) -> None:  # type: ignore[no-untyped-def]
    image = digit_files[0][0].read_bytes()
    memory = PoisonMemory(tmp_path)
    assert memory.preprocess(_stage(repository), [image], threading.Event())[1] == [None]
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / "working" / f"{int(exited.stdout)}-7"
    left.write_text(image_digest(image))  # as that process would have left it, dying while it decoded the image
    memory.collect()
    with pytest.raises(HttpError) as refused:
        memory.refuse_known([digit_files[1][0].read_bytes(), image])
    assert refused.value.status == 422 and refused.value.message.startswith("image 1: worker_crashed: ")
    assert memory.refuse_known([digit_files[1][0].read_bytes()])  # other images pass
    assert not left.exists()  # the dead process's file was consumed


def test_bookkeeping_never_fails_a_request_when_its_folders_are_removed(
    tmp_path: Path, repository, digit_files
) -> None:  # type: ignore[no-untyped-def]
    memory = PoisonMemory(tmp_path / "memory")
    shutil.rmtree(tmp_path / "memory")  # a temporary-folder cleaner ran
    pixels, errors = memory.preprocess(_stage(repository), [digit_files[0][0].read_bytes()], threading.Event())
    assert errors == [None] and pixels.shape == (1, 8, 8, 1)
    assert (tmp_path / "memory" / "working").is_dir()
