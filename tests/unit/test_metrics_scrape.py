"""A scrape in multiprocess mode (gunicorn and Celery processes writing metric files) while a
process that is starting has created its file but not yet sized it."""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

import pytest

from conveyor import metrics

# What prometheus_client writes first into a metric file: the bytes in use (8: the header only).
EMPTY_FILE_HEADER = struct.pack("i", 8) + b"\0" * 4


def size_later(path: Path, after: float) -> threading.Thread:
    """Do what a starting process does to its new metric file, after a moment."""

    def size() -> None:
        time.sleep(after)
        with path.open("r+b") as f:
            f.truncate(1 << 16)
            f.write(EMPTY_FILE_HEADER)

    thread = threading.Thread(target=size)
    thread.start()
    return thread


def test_a_scrape_reads_again_while_a_starting_process_sizes_its_metric_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    created = tmp_path / "counter_4242.db"
    created.touch()  # created, not yet sized
    sizing = size_later(created, after=0.05)

    body, _ = metrics.exposition()

    sizing.join()
    assert body == b""


def test_a_metric_file_that_never_gets_sized_still_fails_the_scrape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    (tmp_path / "counter_4242.db").touch()

    with pytest.raises(struct.error):
        metrics.exposition()
