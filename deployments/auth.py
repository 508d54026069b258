"""Optional bearer-token auth for the ingress.

Tokens come from an environment variable (comma-separated) and/or a file (one a line); the
config names only where they live, so no token sits in a config file, a log line or /stats.
Every presented token is compared with every configured one by `hmac.compare_digest`, without
an early exit, so the time taken says nothing about how close a guess was.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from calibration.config import AuthArgs

__all__ = ["TokenCheck", "load_tokens"]


def load_tokens(args: AuthArgs) -> tuple[bytes, ...]:
    """The configured tokens; an empty tuple means auth is off."""
    tokens: list[str] = []
    if args.tokens_env:
        tokens += os.environ.get(args.tokens_env, "").split(",")
    if args.tokens_file:
        path = Path(args.tokens_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"auth.tokens_file {path} does not exist")
        tokens += path.read_text().splitlines()
    return tuple(t.strip().encode() for t in tokens if t.strip())


class TokenCheck:
    """Is this Authorization header one of the configured bearer tokens?"""

    def __init__(self, tokens: tuple[bytes, ...], open_paths: list[str]) -> None:
        self._tokens = tokens
        self.open_paths = frozenset(open_paths)

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def __repr__(self) -> str:  # never the tokens themselves
        return f"TokenCheck({len(self._tokens)} tokens, open={sorted(self.open_paths)})"

    def allows(self, path: str, authorization: str | None) -> bool:
        if not self._tokens or path in self.open_paths:
            return True
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return False
        given = presented.strip().encode()
        ok = False
        for token in self._tokens:
            ok |= hmac.compare_digest(given, token)
        return ok
