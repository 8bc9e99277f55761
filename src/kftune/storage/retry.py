"""Retries of transient storage errors: one policy (attempts, backoff, timeouts) for every backend.

Each backend classifies its client's exceptions (permanent: raise a :class:`KftuneError`;
transient: raise :class:`Transient`); :func:`with_retries` does the rest. The clients' own
retries are switched off so that this policy is the only one.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from kftune.errors import ConfigError, KftuneError

log = logging.getLogger("kftune.storage")

T = TypeVar("T")


class StorageUnavailable(KftuneError):
    """A storage request kept failing with transient errors until the attempts ran out."""


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts and backoff for transient errors, and per-request timeouts (seconds)."""

    attempts: int = 5
    initial_delay: float = 0.5
    max_delay: float = 8.0
    connect_timeout: float = 10.0
    read_timeout: float = 120.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RetryPolicy:
        env = os.environ if env is None else env
        try:
            attempts = int(env.get("KFTUNE_STORAGE_ATTEMPTS", cls.attempts))
            delay = float(env.get("KFTUNE_STORAGE_RETRY_DELAY", cls.initial_delay))
        except ValueError as exc:
            raise ConfigError(f"KFTUNE_STORAGE_ATTEMPTS / KFTUNE_STORAGE_RETRY_DELAY: {exc}") from None
        if attempts < 1 or delay < 0:
            raise ConfigError("KFTUNE_STORAGE_ATTEMPTS must be >= 1 and KFTUNE_STORAGE_RETRY_DELAY >= 0")
        return cls(attempts=attempts, initial_delay=delay)

    def delay(self, attempt: int) -> float:
        """Sleep before attempt ``attempt + 1`` (``attempt`` counts from 1): exponential, jittered."""
        base = min(self.max_delay, self.initial_delay * 2 ** (attempt - 1))
        return base * (0.5 + random.random() / 2)


class Transient(Exception):
    """A failure classified as transient (worth retrying), with a short description."""


def with_retries(call: Callable[[], T], what: str, policy: RetryPolicy, classify: Callable[[BaseException], None]) -> T:
    """Run ``call``; retry it on transient errors, as ``classify`` decides.

    ``classify(exc)`` raises a :class:`KftuneError` for a permanent failure, raises
    :class:`Transient` for a transient one, and returns for anything else (re-raised as is).
    """
    for attempt in range(1, policy.attempts + 1):
        try:
            return call()
        except KftuneError:
            raise
        except Exception as exc:
            try:
                classify(exc)
            except Transient as transient:
                if attempt == policy.attempts:
                    raise StorageUnavailable(
                        f"{what}: still failing after {policy.attempts} attempts: {transient}"
                    ) from None
                pause = policy.delay(attempt)
                log.warning("%s: %s; retrying in %.1f s (attempt %d/%d)", what, transient, pause,
                            attempt + 1, policy.attempts)
                time.sleep(pause)
                continue
            raise
    raise AssertionError("unreachable")


def short_error(exc: BaseException) -> str:
    """A one-line description of a connection-level error: its innermost cause (e.g. the
    ``NewConnectionError`` inside requests' ``ConnectionError`` inside ``MaxRetryError``)."""
    for _ in range(5):
        inner = getattr(exc, "reason", None)
        if not isinstance(inner, BaseException) and exc.args and isinstance(exc.args[0], BaseException):
            inner = exc.args[0]
        if not isinstance(inner, BaseException):
            break
        exc = inner
    text = (str(exc).splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
