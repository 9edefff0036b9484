"""Supabase Auth (GoTrue) through the `supabase` package's auth client: password sign-up, sign-in,
sign-out, the user behind an access token, and the admin listing; its refusals as our errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError
from supabase_auth import SyncGoTrueAdminAPI, SyncGoTrueClient
from supabase_auth.errors import (
    AuthApiError,
    AuthError,
    AuthRetryableError,
    AuthUnknownError,
    AuthWeakPasswordError,
)
from supabase_auth.types import (
    AuthResponse,
    SignInWithEmailAndPasswordCredentials,
    SignUpWithEmailAndPasswordCredentials,
    User,
)

from conveyor.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    InvalidToken,
    RateLimited,
    ServiceUnavailable,
    Unauthorized,
)
from conveyor.settings import Settings

AUTH_TIMEOUT_SECONDS = 10
# GoTrue does not say how long its own rate limits last.
AUTH_RATE_LIMIT_RETRY_SECONDS = 60


class AuthNotConfigured(ServiceUnavailable):
    """Supabase Auth is not configured on this server: set SUPABASE_URL (and SUPABASE_ANON_KEY)."""

    code = "AUTH_NOT_CONFIGURED"


class AuthUnavailable(ServiceUnavailable):
    """Supabase Auth is unreachable, failing or refusing this server's key; retry shortly."""


class InvalidCredentials(Unauthorized):
    """The email or password is wrong."""

    code = "INVALID_CREDENTIALS"


class EmailNotConfirmed(Forbidden):
    """Confirm your email address (follow the link Supabase sent), then sign in."""

    code = "EMAIL_NOT_CONFIRMED"


class UserBanned(Forbidden):
    """This user is banned in Supabase Auth."""

    code = "USER_BANNED"


class UserAlreadyExists(Conflict):
    """A user with this email is already registered; sign in instead."""

    code = "USER_ALREADY_EXISTS"


class WeakPassword(BadRequest):
    """Supabase Auth refused the password as too weak."""

    code = "WEAK_PASSWORD"


class SignupDisabled(Forbidden):
    """Sign-ups (or this sign-in method) are disabled in the Supabase project."""

    code = "SIGNUP_DISABLED"


class AuthRequestRefused(BadRequest):
    """Supabase Auth refused the request."""

    code = "AUTH_REQUEST_REFUSED"


class UserRejected(InvalidToken):
    """Supabase Auth does not accept this token's user or session (signed out, deleted or
    banned): sign in again."""

    code = "SUPABASE_USER_REJECTED"


class AuthUser(BaseModel):
    """A Supabase Auth user, as Conveyor reads it."""

    model_config = ConfigDict(frozen=True)

    id: UUID
    aud: str = "authenticated"
    email: str | None = None
    phone: str | None = None
    created_at: datetime
    confirmation_sent_at: datetime | None = None
    email_confirmed_at: datetime | None = None
    last_sign_in_at: datetime | None = None
    banned_until: datetime | None = None
    app_metadata: dict[str, Any] = {}
    user_metadata: dict[str, Any] = {}

    def is_banned(self, now: datetime | None = None) -> bool:
        """True while a ban set in Supabase Auth lasts."""
        return self.banned_until is not None and self.banned_until > (now or datetime.now(UTC))


class AuthSession(BaseModel):
    """The tokens of a signed-in session."""

    model_config = ConfigDict(frozen=True)

    access_token: str
    refresh_token: str
    token_type: str
    expires_in: int
    expires_at: int | None = None


class AuthResult(BaseModel):
    """A sign-up or sign-in: the user, and the session unless the email must be confirmed first."""

    model_config = ConfigDict(frozen=True)

    user: AuthUser
    session: AuthSession | None = None


# GoTrue's error codes (supabase_auth.errors.ErrorCode) and what each becomes here.
REFUSALS: dict[str, type[Exception]] = {
    "invalid_credentials": InvalidCredentials,
    "email_not_confirmed": EmailNotConfirmed,
    "phone_not_confirmed": EmailNotConfirmed,
    "user_banned": UserBanned,
    "user_already_exists": UserAlreadyExists,
    "email_exists": UserAlreadyExists,
    "phone_exists": UserAlreadyExists,
    "signup_disabled": SignupDisabled,
    "email_provider_disabled": SignupDisabled,
    "phone_provider_disabled": SignupDisabled,
    "provider_disabled": SignupDisabled,
}


def refusal(exc: AuthApiError, action: str, *, token_call: bool) -> Exception:
    """The error a client sees for one refusal of GoTrue's."""
    message = exc.message or str(exc)
    if exc.status >= 500:
        return AuthUnavailable(f"Supabase Auth failed to {action} ({exc.status}): {message}")
    if exc.status == 429 or (exc.code or "").startswith("over_"):
        return RateLimited(
            f"Supabase Auth is rate-limiting this: {message}",
            retry_after=AUTH_RATE_LIMIT_RETRY_SECONDS,
        )
    # Kong, in front of GoTrue, answers 401 without a code when it refuses the apikey.
    key_refused = exc.code is None and "api key" in message.lower()
    if token_call and exc.status in (401, 403, 404) and not key_refused:
        return UserRejected(
            f"Supabase Auth refused the token ({exc.code or exc.status}): {message}"
        )
    known = REFUSALS.get(exc.code or "")
    if known is not None:
        return known(message)
    if exc.code is None and "invalid login credentials" in message.lower():
        return InvalidCredentials(message)  # GoTrue before error codes: 400 invalid_grant
    if key_refused or exc.code in ("not_admin", "no_authorization") or exc.status == 401:
        # A key of ours (anon or service role) was refused: the server's setup, not the caller.
        return AuthUnavailable(f"Supabase Auth refused this server's key ({action}): {message}")
    return AuthRequestRefused(f"Supabase Auth refused to {action}: {message}")


@contextmanager
def auth_errors(action: str, *, token_call: bool = False) -> Iterator[None]:
    """supabase_auth's exceptions as ConveyorErrors: outages 503, refusals 4xx with a clear code.
    token_call: the call carried a user's access token, so 401/403/404 mean "not that user"."""
    try:
        yield
    except AuthRetryableError as exc:
        raise AuthUnavailable(f"Supabase Auth unreachable ({action}): {exc.message}") from exc
    except AuthWeakPasswordError as exc:
        reasons = list(exc.reasons) if isinstance(exc.reasons, list) else []
        raise WeakPassword(exc.message, reasons=reasons) from exc
    except AuthApiError as exc:
        raise refusal(exc, action, token_call=token_call) from exc
    except AuthUnknownError as exc:
        raise AuthUnavailable(f"Supabase Auth answered unreadably ({action})") from exc
    except AuthError as exc:
        raise AuthRequestRefused(f"Cannot {action}: {exc.message}") from exc
    except (httpx.HTTPError, ValidationError) as exc:
        raise AuthUnavailable(f"Supabase Auth unreachable or unreadable ({action})") from exc


def auth_user(user: User) -> AuthUser:
    """Our view of supabase_auth's User."""
    return AuthUser.model_validate(user.model_dump())


def auth_result(response: AuthResponse) -> AuthResult:
    """Our view of a sign-up or sign-in answer."""
    if response.user is None:
        raise AuthUnavailable("Supabase Auth answered without a user")
    session = response.session
    return AuthResult(
        user=auth_user(response.user),
        session=AuthSession.model_validate(session.model_dump()) if session else None,
    )


class SupabaseAuth:
    """One project's Auth API. A fresh GoTrue client per call: its session state must never be
    shared between the users a server acts for; the HTTP connection pool is."""

    def __init__(
        self,
        supabase_url: str,
        *,
        api_key: str | None,
        service_key: str | None,
        timeout: float = AUTH_TIMEOUT_SECONDS,
    ) -> None:
        self.url = supabase_url.rstrip("/") + "/auth/v1"
        self._api_key = api_key or service_key
        self._service_key = service_key
        self._http = httpx.Client(timeout=timeout)

    def _client(self) -> SyncGoTrueClient:
        headers = {"apikey": self._api_key} if self._api_key else {}
        return SyncGoTrueClient(
            url=self.url,
            headers=headers,
            auto_refresh_token=False,
            persist_session=False,
            http_client=self._http,
        )

    def sign_up(
        self, email: str, password: str, user_metadata: dict[str, Any] | None = None
    ) -> AuthResult:
        """Register a user with a password (and optional `user_metadata`); no session while the
        email awaits confirmation."""
        credentials: SignUpWithEmailAndPasswordCredentials = {"email": email, "password": password}
        if user_metadata:
            credentials["options"] = {"data": user_metadata}
        with auth_errors("sign up"):
            return auth_result(self._client().sign_up(credentials))

    def sign_in(self, email: str, password: str) -> AuthResult:
        """A session for email and password (GoTrue's password grant)."""
        credentials: SignInWithEmailAndPasswordCredentials = {"email": email, "password": password}
        with auth_errors("sign in"):
            return auth_result(self._client().sign_in_with_password(credentials))

    def sign_out(self, access_token: str) -> None:
        """Revoke the session the access token belongs to; one already gone counts as done."""
        try:
            with auth_errors("sign out", token_call=True):
                self._client().admin.sign_out(access_token, "local")
        except UserRejected:
            return

    def current_user(self, access_token: str) -> AuthUser:
        """The user behind an access token, as Supabase Auth knows them now (UserRejected when
        signed out, deleted or refused)."""
        with auth_errors("read the user", token_call=True):
            response = self._client().get_user(access_token)
            if response is None:
                raise UserRejected("No access token to check.")
            return auth_user(response.user)

    def list_users(self, *, page: int = 1, per_page: int = 50) -> list[AuthUser]:
        """One page of the project's users (needs SUPABASE_SERVICE_ROLE_KEY)."""
        if self._service_key is None:
            raise AuthNotConfigured(
                "Listing Supabase users needs SUPABASE_SERVICE_ROLE_KEY on this server."
            )
        key = self._service_key
        admin = SyncGoTrueAdminAPI(
            url=self.url,
            headers={"apikey": key, "Authorization": f"Bearer {key}"},
            http_client=self._http,
        )
        with auth_errors("list users"):
            return [auth_user(user) for user in admin.list_users(page=page, per_page=per_page)]

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()


def auth_for(settings: Settings) -> SupabaseAuth | None:
    """The project's Auth API when SUPABASE_URL is set, else None."""
    if not settings.supabase_url:
        return None
    anon = settings.supabase_anon_key
    service = settings.supabase_service_role_key
    return SupabaseAuth(
        settings.supabase_url,
        api_key=anon.get_secret_value() if anon else None,
        service_key=service.get_secret_value() if service else None,
    )
