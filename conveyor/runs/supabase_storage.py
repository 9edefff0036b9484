"""Large step outputs in a private Supabase Storage bucket, through the `supabase` client's
Storage API with the service role key; and the bucket's setup and check for migrate and doctor."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

import httpx
from storage3.exceptions import StorageApiError
from storage3.utils import StorageException
from supabase import ClientOptions, create_client

from conveyor.errors import ServiceUnavailable

STORAGE_TIMEOUT_SECONDS = 30
LIST_PAGE = 1000


class StorageUnavailable(ServiceUnavailable):
    """Supabase Storage did not take or give the object (unreachable, failing or refusing the
    key); retry shortly."""


class BucketMissing(StorageUnavailable):
    """The artifact bucket does not exist: `conveyor migrate` creates it."""


@contextmanager
def storage_errors(action: str, bucket: str) -> Iterator[None]:
    """Any failure of a Storage call as StorageUnavailable: the run keeps its claim and is retried,
    since a wrong key or a missing bucket is fixed outside the run, never by failing it."""
    try:
        yield
    except StorageApiError as exc:
        if is_not_found(exc) and "bucket" in str(exc.message).lower():
            raise BucketMissing(
                f"Supabase Storage has no bucket {bucket!r}: run `conveyor migrate`"
            ) from exc
        raise StorageUnavailable(
            f"Supabase Storage refused to {action} ({exc.status} {exc.code}): {exc.message}"
        ) from exc
    except (httpx.HTTPError, StorageException) as exc:
        raise StorageUnavailable(f"Supabase Storage unreachable ({action}): {exc}") from exc


def is_not_found(exc: StorageApiError) -> bool:
    """Storage says 404 in the body's statusCode, whatever the HTTP status was."""
    return str(exc.status) == "404"


class SupabaseArtifactStore:
    """Objects under `<run id>/…` in one bucket, named by their object URL."""

    def __init__(self, supabase_url: str, service_key: str, bucket: str) -> None:
        # Our own httpx client: HTTP/1.1 with one timeout, rather than the deprecated per-client
        # timeout storage3 otherwise warns about.
        client = create_client(
            supabase_url,
            service_key,
            options=ClientOptions(
                auto_refresh_token=False,
                persist_session=False,
                httpx_client=httpx.Client(timeout=STORAGE_TIMEOUT_SECONDS),
            ),
        )
        self.storage = client.storage
        self.bucket = bucket
        self.prefix = f"{supabase_url.rstrip('/')}/storage/v1/object/{bucket}/"

    def put(self, key: str, data: bytes) -> str:
        """Upload, overwriting: a retried step writes the same key."""
        with storage_errors("upload", self.bucket):
            self.storage.from_(self.bucket).upload(
                key, data, {"content-type": "application/json", "upsert": "true"}
            )
        return self.prefix + quote(key)

    def get(self, url: str) -> bytes:
        """Download an object of this bucket by its key, through this host's own endpoint: the URL
        names the endpoint its writer used, which another host may reach by another name."""
        _, marker, key = urlsplit(url).path.partition(f"/storage/v1/object/{self.bucket}/")
        if not marker or not key:
            raise ValueError(f"{url} is not in this project's bucket {self.bucket!r}")
        with storage_errors("download", self.bucket):
            return self.storage.from_(self.bucket).download(unquote(key))

    def ensure_bucket(self) -> str:
        """Create the bucket, private, unless it exists; what was done, for `conveyor migrate`."""
        state = self.bucket_state()
        if state.exists:
            return f"bucket {self.bucket!r} exists"
        with storage_errors("create the bucket", self.bucket):
            try:
                self.storage.create_bucket(self.bucket, options={"public": False})
            except StorageApiError as exc:
                if str(exc.status) != "409":  # created meanwhile by another migrate
                    raise
        return f"created private bucket {self.bucket!r}"

    def bucket_state(self) -> BucketState:
        """Whether the bucket exists and is public."""
        with storage_errors("read the bucket", self.bucket):
            try:
                bucket = self.storage.get_bucket(self.bucket)
            except StorageApiError as exc:
                if is_not_found(exc):
                    return BucketState(exists=False, public=False)
                raise
        return BucketState(exists=True, public=bucket.public)

    def run_folders(self) -> list[str]:
        """The top-level folders of the bucket (one per run that stored an output)."""
        names: list[str] = []
        with storage_errors("list the bucket", self.bucket):
            while True:
                page = self.storage.from_(self.bucket).list(
                    "", {"limit": LIST_PAGE, "offset": len(names)}
                )
                names.extend(str(entry["name"]) for entry in page)
                if len(page) < LIST_PAGE:
                    return names

    def delete_folder(self, folder: str) -> int:
        """Remove every object under folder/ (attempt/step.json); how many there were."""
        bucket = self.storage.from_(self.bucket)
        with storage_errors("delete objects", self.bucket):
            paths = [
                f"{folder}/{attempt['name']}/{item['name']}"
                for attempt in bucket.list(folder, {"limit": LIST_PAGE})
                for item in bucket.list(f"{folder}/{attempt['name']}", {"limit": LIST_PAGE})
            ]
            if paths:
                bucket.remove(paths)
        return len(paths)


@dataclass(frozen=True)
class BucketState:
    """What Storage says of the artifact bucket."""

    exists: bool
    public: bool
