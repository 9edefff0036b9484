"""Large step outputs live outside the row: in Supabase Storage when configured, else a local
folder. The row keeps a small stub and the URL, so run reads stay cheap."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from conveyor.runs.supabase_storage import SupabaseArtifactStore
from conveyor.settings import Settings


class ArtifactStore(Protocol):
    """Somewhere to keep bytes under a key and read them back by URL."""

    def put(self, key: str, data: bytes) -> str:
        """Store data under key; return the URL that names it."""
        ...

    def get(self, url: str) -> bytes:
        """The bytes a URL returned by put names."""
        ...


class LocalArtifactStore:
    """Files under a folder, named by file:// URLs (development, single host)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def put(self, key: str, data: bytes) -> str:
        """Write the file (atomically, so a reader never sees half of it)."""
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
        partial.write_bytes(data)
        partial.replace(path)
        return path.as_uri()

    def get(self, url: str) -> bytes:
        """Read a file this store wrote; refuse paths outside its folder."""
        path = Path(unquote(urlsplit(url).path)).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"{url} is not in the artifact folder {self.root}")
        return path.read_bytes()


def store_for(settings: Settings) -> ArtifactStore:
    """Supabase Storage when SUPABASE_URL and the service role key are set, else data_dir."""
    if settings.supabase_url and settings.supabase_service_role_key:
        return SupabaseArtifactStore(
            settings.supabase_url,
            settings.supabase_service_role_key.get_secret_value(),
            settings.artifacts_bucket,
        )
    return LocalArtifactStore(settings.data_dir / "artifacts")


def offload(store: ArtifactStore, key: str, value: Any, *, limit: int) -> tuple[Any, str | None]:
    """(value, None) when it is small; else (a stub, its URL) after storing it."""
    encoded = json.dumps(value).encode()
    if len(encoded) <= limit:
        return value, None
    url = store.put(key, encoded)
    return {"stored_at": url, "bytes": len(encoded)}, url


def load(store: ArtifactStore, output: Any, url: str | None) -> Any:
    """The full value of a stored output (fetched when it was offloaded)."""
    return json.loads(store.get(url)) if url else output
