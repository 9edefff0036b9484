"""A loopback server that speaks the part of Supabase Auth's (GoTrue's) API Conveyor calls through
the `supabase` package's auth client, with GoTrue's request, session and error shapes.

Implemented under `/auth/v1`: `POST /signup`, `POST /token?grant_type=password`, `POST /logout`
(`?scope=local|global|others`), `GET /user`, `GET /admin/users` (`?page=&per_page=`) and the
JWKS document. Access tokens are HS256 JWTs with Supabase's claims (`sub`, `email`, `role`,
`aud`, `exp`, `session_id`, ...) signed with the test's JWT secret, so Conveyor's verifier
accepts them. Errors come as GoTrue sends them: `{code, message}` when the client sends
`X-Supabase-Api-Version: 2024-01-01` (supabase-py does), the older `{code, error_code, msg}`
otherwise. Every request needs `apikey` (Kong's check in front of GoTrue); the admin route needs
the service role key as the bearer. A test can make it answer 503, or script `/user`'s answer.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

PREFIX = "/auth/v1/"
API_VERSION = "2024-01-01"
ANON_KEY = "anon-key-for-tests"
SERVICE_KEY = "service-role-key-for-tests"
PASSWORD = "correct horse"  # what users a test adds sign in with
ACCESS_TOKEN_SECONDS = 3600
MIN_PASSWORD = 6


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class FakeUser:
    id: uuid.UUID
    email: str
    password: str
    confirmed: bool
    created_at: str = field(default_factory=now_iso)
    banned_until: str | None = None
    last_sign_in_at: str | None = None
    user_metadata: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": str(self.id),
            "aud": "authenticated",
            "role": "authenticated",
            "email": self.email,
            "phone": "",
            "app_metadata": {"provider": "email", "providers": ["email"]},
            "user_metadata": self.user_metadata,
            "identities": [],
            "created_at": self.created_at,
            "updated_at": self.created_at,
            "is_anonymous": False,
        }
        if self.confirmed:
            body["email_confirmed_at"] = self.created_at
            body["confirmed_at"] = self.created_at
        else:
            body["confirmation_sent_at"] = self.created_at
        if self.last_sign_in_at:
            body["last_sign_in_at"] = self.last_sign_in_at
        if self.banned_until:
            body["banned_until"] = self.banned_until
        return body


class FakeSupabaseAuth:
    """Users and sessions in memory, served on 127.0.0.1 until close()."""

    def __init__(self, jwt_secret: str, *, autoconfirm: bool = True) -> None:
        self.jwt_secret = jwt_secret
        self.autoconfirm = autoconfirm
        self.users: dict[uuid.UUID, FakeUser] = {}
        self.sessions: dict[str, uuid.UUID] = {}  # session id -> user id
        self.requests: list[tuple[str, str]] = []
        self.down = False
        self.user_answer: tuple[int, str, str] | None = None  # scripted GET /user refusal
        self.lock = threading.Lock()
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    # What a test sets up or changes on the Supabase side.

    def add_user(
        self, email: str, password: str = PASSWORD, *, confirmed: bool = True
    ) -> uuid.UUID:
        """A user registered earlier (e.g. with supabase-js)."""
        user = FakeUser(uuid.uuid4(), email, password, confirmed)
        self.users[user.id] = user
        return user.id

    def session_for(self, user_id: uuid.UUID) -> str:
        """An access token of a new session of the user, as the frontend holds it after sign-in."""
        with self.lock:
            return self.new_session(self.users[user_id])["access_token"]

    def delete_user(self, user_id: uuid.UUID) -> None:
        """Delete the user in the dashboard: their sessions go with them."""
        with self.lock:
            self.users.pop(user_id, None)
            self.sessions = {s: u for s, u in self.sessions.items() if u != user_id}

    def ban(self, user_id: uuid.UUID, *, keep_sessions: bool = False) -> None:
        """Ban the user for a day (GoTrue also signs them out, unless keep_sessions)."""
        with self.lock:
            until = datetime.fromtimestamp(time.time() + 86400, UTC)
            self.users[user_id].banned_until = until.isoformat()
            if not keep_sessions:
                self.sessions = {s: u for s, u in self.sessions.items() if u != user_id}

    def close(self) -> None:
        """Stop serving and release the listening socket."""
        self.server.shutdown()
        self.server.server_close()

    # The wire format.

    def app(self, environ: dict[str, Any], start_response: Any) -> Any:
        with Request(environ) as request, self.lock:
            self.requests.append((request.method, request.full_path.rstrip("?")))
            response = self.respond(request)
        return response(environ, start_response)

    def error(
        self, request: Request, status: int, code: str, message: str, **extra: Any
    ) -> Response:
        if request.headers.get("X-Supabase-Api-Version") == API_VERSION:
            body: dict[str, Any] = {"code": code, "message": message, **extra}
            headers = {"X-Supabase-Api-Version": API_VERSION}
        else:
            body = {"code": status, "error_code": code, "msg": message, **extra}
            headers = {}
        return Response(json.dumps(body), status, headers, content_type="application/json")

    def ok(self, body: Any, status: int = 200) -> Response:
        return Response(json.dumps(body), status, content_type="application/json")

    def respond(self, request: Request) -> Response:
        if self.down:
            return Response(
                '{"message":"upstream unavailable"}', 503, content_type="application/json"
            )
        if request.headers.get("apikey") not in (ANON_KEY, SERVICE_KEY):
            return Response('{"message":"Invalid API key"}', 401, content_type="application/json")
        if not request.path.startswith(PREFIX):
            return self.error(request, 404, "not_found", "Not found")
        route, method = request.path.removeprefix(PREFIX), request.method
        if (method, route) == ("GET", ".well-known/jwks.json"):
            return self.ok({"keys": []})
        if (method, route) == ("POST", "signup"):
            return self.signup(request)
        if (method, route) == ("POST", "token") and request.args.get("grant_type") == "password":
            return self.password_grant(request)
        if (method, route) == ("POST", "logout"):
            return self.logout(request)
        if (method, route) == ("GET", "user"):
            return self.current_user(request)
        if (method, route) == ("GET", "admin/users"):
            return self.list_users(request)
        return self.error(request, 404, "not_found", "Not found")

    def new_session(self, user: FakeUser) -> dict[str, Any]:
        session_id = str(uuid.uuid4())
        self.sessions[session_id] = user.id
        user.last_sign_in_at = now_iso()
        issued = int(time.time())
        claims = {
            "iss": f"{self.url}/auth/v1",
            "sub": str(user.id),
            "aud": "authenticated",
            "exp": issued + ACCESS_TOKEN_SECONDS,
            "iat": issued,
            "email": user.email,
            "phone": "",
            "app_metadata": {"provider": "email", "providers": ["email"]},
            "user_metadata": user.user_metadata,
            "role": "authenticated",
            "aal": "aal1",
            "amr": [{"method": "password", "timestamp": issued}],
            "session_id": session_id,
            "is_anonymous": False,
        }
        return {
            "access_token": jwt.encode(claims, self.jwt_secret, algorithm="HS256"),
            "token_type": "bearer",
            "expires_in": ACCESS_TOKEN_SECONDS,
            "expires_at": issued + ACCESS_TOKEN_SECONDS,
            "refresh_token": secrets.token_urlsafe(12),
            "user": user.as_json(),
        }

    def credentials(self, request: Request) -> tuple[str, str] | Response:
        body = request.get_json(silent=True) or {}
        email, password = body.get("email"), body.get("password")
        if not isinstance(email, str) or not isinstance(password, str) or not email:
            return self.error(request, 400, "validation_failed", "Signup requires a valid password")
        return email.strip().lower(), password

    def signup(self, request: Request) -> Response:
        found = self.credentials(request)
        if isinstance(found, Response):
            return found
        email, password = found
        if any(u.email == email for u in self.users.values()):
            return self.error(request, 422, "user_already_exists", "User already registered")
        if len(password) < MIN_PASSWORD:
            return self.error(
                request,
                422,
                "weak_password",
                f"Password should be at least {MIN_PASSWORD} characters.",
                weak_password={"reasons": ["length"]},
            )
        user = FakeUser(uuid.uuid4(), email, password, confirmed=self.autoconfirm)
        if isinstance(body := request.get_json(silent=True), dict) and isinstance(
            body.get("data"), dict
        ):
            user.user_metadata = body["data"]
        self.users[user.id] = user
        return self.ok(self.new_session(user) if self.autoconfirm else user.as_json())

    def password_grant(self, request: Request) -> Response:
        found = self.credentials(request)
        if isinstance(found, Response):
            return found
        email, password = found
        user = next((u for u in self.users.values() if u.email == email), None)
        if user is None or user.password != password:
            return self.error(request, 400, "invalid_credentials", "Invalid login credentials")
        if not user.confirmed:
            return self.error(request, 400, "email_not_confirmed", "Email not confirmed")
        if user.banned_until:
            return self.error(request, 400, "user_banned", "User is banned")
        return self.ok(self.new_session(user))

    def authenticated(self, request: Request) -> dict[str, Any] | Response:
        """The claims of the request's bearer token, as GoTrue's requireAuthentication checks."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return self.error(
                request, 401, "no_authorization", "This endpoint requires a Bearer token"
            )
        try:
            claims: dict[str, Any] = jwt.decode(
                header.removeprefix("Bearer "),
                self.jwt_secret,
                algorithms=["HS256"],
                audience="authenticated",
            )
        except jwt.PyJWTError as exc:
            return self.error(
                request, 403, "bad_jwt", f"invalid JWT: unable to parse or verify signature, {exc}"
            )
        if uuid.UUID(claims["sub"]) not in self.users:
            return self.error(
                request, 403, "user_not_found", "User from sub claim in JWT does not exist"
            )
        if claims.get("session_id") not in self.sessions:
            return self.error(
                request,
                403,
                "session_not_found",
                "Session from session_id claim in JWT does not exist",
            )
        return claims

    def current_user(self, request: Request) -> Response:
        if self.user_answer is not None:
            status, code, message = self.user_answer
            return self.error(request, status, code, message)
        claims = self.authenticated(request)
        if isinstance(claims, Response):
            return claims
        return self.ok(self.users[uuid.UUID(claims["sub"])].as_json())

    def logout(self, request: Request) -> Response:
        claims = self.authenticated(request)
        if isinstance(claims, Response):
            return claims
        scope = request.args.get("scope", "global")
        user, current = uuid.UUID(claims["sub"]), claims["session_id"]
        self.sessions = {
            s: u
            for s, u in self.sessions.items()
            if u != user
            or (scope == "local" and s != current)
            or (scope == "others" and s == current)
        }
        return Response(status=204)

    def list_users(self, request: Request) -> Response:
        if request.headers.get("Authorization") != f"Bearer {SERVICE_KEY}":
            return self.error(request, 403, "not_admin", "User not allowed")
        page = int(request.args.get("page") or 1)
        per_page = int(request.args.get("per_page") or 50)
        everyone = sorted(self.users.values(), key=lambda u: (u.created_at, str(u.id)))
        listed = everyone[(page - 1) * per_page : page * per_page]
        response = self.ok({"users": [u.as_json() for u in listed], "aud": "authenticated"})
        response.headers["x-total-count"] = str(len(everyone))
        return response
