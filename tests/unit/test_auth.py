"""Reading bearer and stream tokens: a token checked once is remembered, never past its expiry."""

from __future__ import annotations

import time
from datetime import timedelta

import jwt
import pytest
from litestar.exceptions import NotAuthorizedException

from app.api.auth import CLOCK_SKEW, _verified, mint_token, read_token

SECRET = "unit-test-secret-of-at-least-32-bytes"


@pytest.fixture(autouse=True)
def _forget_tokens() -> None:
    _verified.cache_clear()


def test_a_remembered_user_token_still_expires_after_the_clock_skew() -> None:
    token = mint_token(SECRET, "alice", ttl=timedelta(minutes=1))
    now = time.time()
    assert read_token(SECRET, token, now=now).user_id == "alice"
    assert read_token(SECRET, token, now=now + 60).user_id == "alice", "within the skew"
    assert _verified.cache_info().hits == 1, "the second read used the remembered check"
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    with pytest.raises(NotAuthorizedException, match="expired"):
        read_token(SECRET, token, now=expires + CLOCK_SKEW.total_seconds())


def test_a_remembered_stream_token_expires_with_no_leeway() -> None:
    token = mint_token(SECRET, "alice", ttl=timedelta(minutes=1), stream_of="rid-1")
    now = time.time()
    assert read_token(SECRET, token, now=now).stream_of == "rid-1"
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    with pytest.raises(NotAuthorizedException, match="expired"):
        read_token(SECRET, token, now=expires)


def test_a_stream_token_just_expired_is_refused_on_first_sight() -> None:
    token = mint_token(SECRET, "alice", ttl=-timedelta(seconds=5), stream_of="rid-1")
    with pytest.raises(NotAuthorizedException, match="expired"):
        read_token(SECRET, token)


def test_a_token_signed_with_another_secret_is_refused_each_time() -> None:
    token = mint_token(SECRET, "alice", ttl=timedelta(minutes=1))
    assert read_token(SECRET, token).user_id == "alice"
    for _ in range(2):
        with pytest.raises(NotAuthorizedException, match="signature"):
            read_token("another-secret-of-at-least-32-bytes!", token)


def test_a_tampered_copy_of_a_remembered_token_is_refused() -> None:
    token = mint_token(SECRET, "alice", ttl=timedelta(minutes=1))
    assert read_token(SECRET, token).user_id == "alice"
    header, _, rest = token.partition(".")
    _claims, _, signature = rest.partition(".")
    forged = jwt.encode({"sub": "mallory", "exp": time.time() + 60}, "x" * 32, algorithm="HS256")
    tampered = ".".join([header, forged.split(".")[1], signature])
    with pytest.raises(NotAuthorizedException, match="signature"):
        read_token(SECRET, tampered)


def test_a_token_expired_beyond_the_skew_is_refused_on_first_sight() -> None:
    token = mint_token(SECRET, "alice", ttl=-CLOCK_SKEW - timedelta(seconds=5))
    with pytest.raises(NotAuthorizedException, match="expired"):
        read_token(SECRET, token)
