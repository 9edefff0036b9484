"""conveyor.auth.supabase_auth against a loopback server speaking GoTrue's API: the calls the
adapters make, the admin listing, and each way Supabase Auth can refuse or fail."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.auth.supabase_auth import (
    AuthNotConfigured,
    AuthUnavailable,
    InvalidCredentials,
    SupabaseAuth,
    UserRejected,
    auth_for,
)
from conveyor.settings import Settings
from tests.fake_supabase_auth import ANON_KEY, SERVICE_KEY, FakeSupabaseAuth
from tests.support import JWT_SECRET


@pytest.fixture
def fake() -> Iterator[FakeSupabaseAuth]:
    server = FakeSupabaseAuth(JWT_SECRET)
    yield server
    server.close()


@pytest.fixture
def auth(fake: FakeSupabaseAuth) -> Iterator[SupabaseAuth]:
    client = SupabaseAuth(fake.url, api_key=ANON_KEY, service_key=SERVICE_KEY)
    yield client
    client.close()


def test_sign_up_sign_in_current_user_and_sign_out(auth: SupabaseAuth) -> None:
    signed_up = auth.sign_up("ada@example.com", "correct horse")
    signed_in = auth.sign_in("ada@example.com", "correct horse")

    assert signed_in.user.id == signed_up.user.id
    assert signed_in.session is not None
    assert auth.current_user(signed_in.session.access_token).email == "ada@example.com"
    auth.sign_out(signed_in.session.access_token)
    with pytest.raises(UserRejected):
        auth.current_user(signed_in.session.access_token)


def test_sign_up_stores_user_metadata_and_reports_the_audience(auth: SupabaseAuth) -> None:
    signed_up = auth.sign_up("ada@example.com", "correct horse", {"name": "Ada"})

    assert signed_up.user.user_metadata == {"name": "Ada"}
    assert signed_up.user.aud == "authenticated"
    assert auth.list_users()[0].user_metadata == {"name": "Ada"}


def test_an_unconfirmed_sign_up_says_when_the_confirmation_was_sent(
    fake: FakeSupabaseAuth, auth: SupabaseAuth
) -> None:
    fake.autoconfirm = False

    signed_up = auth.sign_up("ada@example.com", "correct horse")

    assert signed_up.session is None
    assert signed_up.user.confirmation_sent_at is not None


def test_sign_out_of_a_session_already_gone_is_done(
    auth: SupabaseAuth, fake: FakeSupabaseAuth
) -> None:
    user = fake.add_user("ada@example.com")
    token = fake.session_for(user)
    fake.delete_user(user)
    auth.sign_out(token)


def test_list_users_pages_through_the_admin_api(auth: SupabaseAuth, fake: FakeSupabaseAuth) -> None:
    made = [fake.add_user(f"user{n}@example.com") for n in range(3)]
    first, second = auth.list_users(page=1, per_page=2), auth.list_users(page=2, per_page=2)
    assert [u.id for u in first + second] == made
    assert ("GET", "/auth/v1/admin/users?page=1&per_page=2") in fake.requests


def test_list_users_needs_the_service_role_key(fake: FakeSupabaseAuth) -> None:
    with pytest.raises(AuthNotConfigured, match="SUPABASE_SERVICE_ROLE_KEY"):
        SupabaseAuth(fake.url, api_key=ANON_KEY, service_key=None).list_users()


def test_a_refused_service_key_is_a_server_problem_not_the_callers(
    fake: FakeSupabaseAuth,
) -> None:
    # Kong refuses the apikey before GoTrue sees the request.
    wrong = SupabaseAuth(fake.url, api_key="wrong", service_key="wrong")
    with pytest.raises(AuthUnavailable, match="key"):
        wrong.list_users()
    with pytest.raises(AuthUnavailable):
        wrong.sign_in("ada@example.com", "correct horse")
    with pytest.raises(AuthUnavailable):
        wrong.current_user("any-token")


def test_bad_credentials_and_outages(auth: SupabaseAuth, fake: FakeSupabaseAuth) -> None:
    with pytest.raises(InvalidCredentials):
        auth.sign_in("nobody@example.com", "correct horse")
    fake.down = True
    with pytest.raises(AuthUnavailable):
        auth.current_user("anything")


def test_a_user_supabase_does_not_know_is_rejected(auth: SupabaseAuth) -> None:
    with pytest.raises(UserRejected):
        auth.current_user("not-a-jwt")


def test_auth_for_needs_supabase_url(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, supabase_url=None, data_dir=tmp_path)  # type: ignore[call-arg]
    assert auth_for(settings) is None
    configured = auth_for(settings.model_copy(update={"supabase_url": "http://127.0.0.1:9"}))
    assert configured is not None
    assert configured.url == "http://127.0.0.1:9/auth/v1"
    configured.close()


def test_the_admin_listing_carries_each_users_fields(
    auth: SupabaseAuth, fake: FakeSupabaseAuth
) -> None:
    user = fake.add_user("ada@example.com", confirmed=False)
    [listed] = auth.list_users()
    assert (listed.id, listed.email, listed.email_confirmed_at) == (user, "ada@example.com", None)
    assert isinstance(listed.id, uuid.UUID)
