"""A run's large outputs as its coordinator and lanes read and write them: offloaded to Supabase
Storage past OUTPUT_INLINE_MAX_BYTES, tried again with backoff while Storage is unavailable."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from conveyor.runs import artifacts
from conveyor.runs.store import ClaimedRun
from conveyor.runs.supabase_storage import StorageUnavailable
from conveyor.runs.supervision import HandedBack, Watch
from conveyor.settings import Settings

log = structlog.get_logger(__name__)

T = TypeVar("T")
STORAGE_RETRY_FIRST_SECONDS = 0.5
STORAGE_RETRY_MAX_SECONDS = 10.0


@dataclass
class StoredOutputs:
    """The outputs of one claimed run in one store."""

    store: artifacts.ArtifactStore
    settings: Settings
    claim: ClaimedRun

    def load(self, watch: Watch, output: Any, url: str | None) -> Any:
        """A step's full output, fetched from storage when it was offloaded."""
        return self._with_storage(watch, lambda: artifacts.load(self.store, output, url))

    def offload(self, watch: Watch, name: str, value: Any) -> tuple[Any, str | None]:
        """value, or a stub and its URL once stored (see artifacts.offload)."""
        key = f"{self.claim.id}/{self.claim.attempt}/{name}.json"
        limit = self.settings.output_inline_max_bytes
        return self._with_storage(
            watch, lambda: artifacts.offload(self.store, key, value, limit=limit)
        )

    def _with_storage(self, watch: Watch, action: Callable[[], T]) -> T:
        """action, tried again with backoff while Supabase Storage is unavailable, for up to
        STORAGE_WAIT_SECONDS. The claim is kept meanwhile (the watch renews the lease), so a step
        that finished is not run again; past the wait, StorageUnavailable reaches execute_run."""
        give_up = time.monotonic() + self.settings.storage_wait_seconds
        delay = STORAGE_RETRY_FIRST_SECONDS
        while True:
            try:
                return action()
            except StorageUnavailable as exc:
                if time.monotonic() + delay > give_up:
                    raise
                log.warning("storage_unavailable", error=exc.message, retry_in=delay)
                try:
                    watch.sleep(delay)
                except HandedBack as stopping:
                    # The attempt that made this output is given back: it runs again elsewhere.
                    raise HandedBack() from stopping
                delay = min(delay * 2, STORAGE_RETRY_MAX_SECONDS)
