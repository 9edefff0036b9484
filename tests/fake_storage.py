"""A loopback server that speaks the part of Supabase Storage's REST API Conveyor calls through
the `supabase` client, with Storage's request and error shapes.

Implemented under `/storage/v1`: `GET`/`POST /bucket[/<id>]`, multipart `POST /object/<bucket>/
<path>` (with `x-upsert`), `GET /object/<bucket>/<path>`, `POST /object/list/<bucket>` and
`DELETE /object/<bucket>`. Errors come as Storage sends them: a JSON body with `statusCode` (a
string), `error` and `message`, HTTP 400 for a missing bucket or object. Requests must carry the
service key as both `apikey` and `Authorization: Bearer`. A test can make it fail every request
with 503 (`outage`), or only the next few.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

PREFIX = "/storage/v1/"


def storage_error(status: str, error: str, message: str, *, http: int = 400) -> Response:
    """An error the way Storage answers it."""
    body = {"statusCode": status, "error": error, "message": message}
    return Response(json.dumps(body), status=http, content_type="application/json")


def ok(body: Any) -> Response:
    return Response(json.dumps(body), status=200, content_type="application/json")


@dataclass
class Bucket:
    id: str
    public: bool
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.id,
            "owner": "",
            "public": self.public,
            "file_size_limit": None,
            "allowed_mime_types": None,
            "created_at": self.created_at,
            "updated_at": self.created_at,
            "type": "STANDARD",
        }


class StorageServer:
    """Buckets and objects in memory, served on 127.0.0.1 until close()."""

    def __init__(self, service_key: str) -> None:
        self.service_key = service_key
        self.buckets: dict[str, Bucket] = {}
        self.objects: dict[tuple[str, str], bytes] = {}  # (bucket, path) -> bytes
        self.requests: list[tuple[str, str]] = []  # (method, path), failed ones included
        self.failures_left = 0
        self.down = False
        self.lock = threading.Lock()
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def create_bucket(self, bucket_id: str, *, public: bool = False) -> None:
        """A bucket made by hand in the dashboard."""
        self.buckets[bucket_id] = Bucket(bucket_id, public)

    def outage(self, down: bool = True) -> None:
        """Answer every request 503 (as Storage does when its database is down) until lifted."""
        self.down = down

    def fail_next(self, count: int) -> None:
        """Answer the next count requests 503."""
        self.failures_left = count

    def close(self) -> None:
        """Stop serving and release the listening socket."""
        self.server.shutdown()
        self.server.server_close()

    def app(self, environ: dict[str, Any], start_response: Any) -> Any:
        with Request(environ) as request, self.lock:  # closes the parsed upload's temp file
            self.requests.append((request.method, request.path))
            response = self.respond(request)
        return response(environ, start_response)

    def respond(self, request: Request) -> Response:
        if self.down or self.failures_left > 0:
            self.failures_left = max(0, self.failures_left - 1)
            return storage_error("503", "DatabaseError", "Database unavailable", http=503)
        if not self.authorized(request):
            return storage_error("403", "Unauthorized", "invalid signature")
        if not request.path.startswith(PREFIX):
            return storage_error("404", "not_found", "Route not found", http=404)
        route = request.path.removeprefix(PREFIX).split("/")
        method = request.method
        if route[0] == "bucket":
            return self.bucket_route(method, route[1:], request)
        if route[:2] == ["object", "list"] and method == "POST":
            return self.list_objects(route[2], request.get_json())
        if route[0] == "object" and method == "DELETE" and len(route) == 2:
            return self.remove(route[1], request.get_json()["prefixes"])
        if route[0] == "object" and len(route) >= 3:
            bucket, path = route[1], "/".join(route[2:])
            if method == "POST":
                return self.upload(bucket, path, request)
            if method == "GET":
                return self.download(bucket, path)
        return storage_error("404", "not_found", "Route not found", http=404)

    def authorized(self, request: Request) -> bool:
        return (
            request.headers.get("apikey") == self.service_key
            and request.headers.get("Authorization") == f"Bearer {self.service_key}"
        )

    def bucket_route(self, method: str, rest: list[str], request: Request) -> Response:
        if method == "POST" and not rest:
            body = request.get_json()
            if body["id"] in self.buckets:
                return storage_error("409", "Duplicate", "The resource already exists")
            self.buckets[body["id"]] = Bucket(body["id"], bool(body.get("public", False)))
            return ok({"name": body["id"]})
        if method == "GET" and len(rest) == 1:
            bucket = self.buckets.get(rest[0])
            if bucket is None:
                return storage_error("404", "Bucket not found", "Bucket not found")
            return ok(bucket.as_json())
        return storage_error("404", "not_found", "Route not found", http=404)

    def upload(self, bucket: str, path: str, request: Request) -> Response:
        if bucket not in self.buckets:
            return storage_error("404", "Bucket not found", "Bucket not found")
        if (bucket, path) in self.objects and request.headers.get("x-upsert") != "true":
            return storage_error("409", "Duplicate", "The resource already exists")
        self.objects[(bucket, path)] = request.files["file"].read()
        return ok({"Key": f"{bucket}/{path}", "Id": str(uuid.uuid4())})

    def download(self, bucket: str, path: str) -> Response:
        data = self.objects.get((bucket, path))
        if data is None:
            return storage_error("404", "not_found", "Object not found")
        return Response(data, status=200, content_type="application/json")

    def list_objects(self, bucket: str, body: dict[str, Any]) -> Response:
        prefix = body.get("prefix", "").strip("/")
        entries: dict[str, dict[str, Any]] = {}
        for owner, path in sorted(self.objects):
            if owner != bucket or (prefix and not path.startswith(prefix + "/")):
                continue
            rest = path[len(prefix) + 1 :] if prefix else path
            name, _, deeper = rest.partition("/")
            entries[name] = {"name": name, "id": None if deeper else str(uuid.uuid4())}
        names = sorted(entries)
        start = int(body.get("offset", 0))
        return ok([entries[n] for n in names[start : start + int(body.get("limit", 100))]])

    def remove(self, bucket: str, paths: list[str]) -> Response:
        removed = [p for p in paths if self.objects.pop((bucket, p), None) is not None]
        return ok([{"name": p, "bucket_id": bucket} for p in removed])
