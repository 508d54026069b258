"""The ingress's pure pieces: which tokens auth accepts, and which failures are retried."""

from __future__ import annotations

import pytest
import ray.exceptions
from pydantic import ValidationError
from ray.serve.exceptions import BackPressureError

from calibration.config import AppArgs, AuthArgs, TierArgs
from deployments.auth import TokenCheck, load_tokens
from deployments.errors import retryable


def test_tokens_come_from_the_env_and_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEYS", " a1 ,b2,, ")
    f = tmp_path / "tokens"
    f.write_text("c3\n\n d4 \n")
    tokens = load_tokens(AuthArgs(tokens_env="MY_KEYS", tokens_file=str(f)))
    assert tokens == (b"a1", b"b2", b"c3", b"d4")
    monkeypatch.delenv("MY_KEYS")
    assert load_tokens(AuthArgs(tokens_env="MY_KEYS")) == ()  # unset: auth off
    with pytest.raises(FileNotFoundError, match="tokens_file"):
        load_tokens(AuthArgs(tokens_file=str(tmp_path / "missing")))


def test_token_check_accepts_only_configured_bearer_tokens():
    check = TokenCheck((b"k1", b"k2"), ["/healthz"])
    assert check.enabled
    assert check.allows("/v1/models", "Bearer k1") and check.allows("/v1/models", "bearer k2")
    for header in (None, "", "Bearer", "Bearer k3", "Basic k1", "k1", "Bearer k1x"):
        assert not check.allows("/v1/chat/completions", header), header
    assert check.allows("/healthz", None)
    assert "k1" not in repr(check) and "k2" not in repr(check)
    off = TokenCheck((), ["/healthz"])
    assert not off.enabled and off.allows("/v1/models", None)


def test_only_replica_failures_are_retried():
    assert retryable(ray.exceptions.ActorDiedError())
    assert retryable(ray.exceptions.ActorUnavailableError("gone", None))
    assert retryable(BackPressureError(num_queued_requests=9, max_queued_requests=8))
    assert not retryable(RuntimeError("the model raised"))
    assert not retryable(TimeoutError("too slow"))
    assert not retryable(ValueError("prompt too long"))


def test_remote_code_must_be_asked_for_on_the_tier_itself():
    tier = {"name": "cheap", "model": "zoo:cheap"}
    assert TierArgs(**tier).trust_remote_code is False
    with pytest.raises(ValidationError, match="set trust_remote_code on the tier itself"):
        TierArgs(**tier, engine_kwargs={"trust_remote_code": True})
    args = AppArgs(tiers=[tier, {"name": "strong", "model": "zoo:strong"}])
    assert args.router.trust_remote_code is False
    with pytest.raises(ValidationError, match="retries"):
        TierArgs(**tier, retries=99)
