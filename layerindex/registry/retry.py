"""When to try an HTTP exchange again, and how long to wait first; no HTTP here.

Retried: connection errors, timeouts and 500/502/503/504 (a registry behind a load balancer or a
CDN has bad seconds), waiting a full-jitter exponential back-off (AWS architecture blog,
"Exponential Backoff And Jitter": ``uniform(0, min(cap, base * 2**n))``, so a crowd of workers
does not retry in step). 429 waits what ``Retry-After`` says when that is reasonable. No other
4xx is retried: the answer would be the same. Nor are the two connection failures another try
will not mend (``is_permanent``): a host name that does not exist (the name server answered
"no such name"; a name server that does not answer, offline, is retried), and a TLS certificate
that fails verification (expired, self-signed, for another name). A connection refused is
retried: a registry restarting refuses for a moment.

Docker Hub reports its pull quota in ``RateLimit-Limit: 100;w=21600`` and ``RateLimit-Remaining:
76;w=21600`` (docker/docs ``usage/pulls.md``), on GET and HEAD alike.
"""

from __future__ import annotations

import random
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

RETRY_STATUSES = frozenset({500, 502, 503, 504})
_QUOTA = re.compile(r"\s*(\d+)\s*(?:;\s*w\s*=\s*(\d+))?")


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` more attempts after the first, so ``retries + 1`` in all."""

    retries: int = 4
    backoff_base: float = 0.5  # seconds before the first retry, at most (full jitter)
    max_backoff: float = 30.0  # the doubling stops here
    max_retry_after: float = 60.0  # a 429 asking for a longer wait is raised, not waited out
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)
    jitter: Callable[[], float] = field(default=random.random, compare=False)  # in [0, 1)

    @property
    def attempts(self) -> int:
        return self.retries + 1

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first)."""
        ceiling = min(self.max_backoff, self.backoff_base * 2.0**retry)
        return self.jitter() * ceiling


_NO_SUCH_NAME = frozenset(
    getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, name)
)


def is_permanent(failure: OSError | None) -> bool:
    """Whether a connection's failure (the operating system's error under the HTTP stack's
    wrappers) is one that trying again will not mend: no such host name, or a certificate
    that fails verification."""
    if isinstance(failure, ssl.SSLCertVerificationError):
        return True
    return isinstance(failure, socket.gaierror) and failure.errno in _NO_SUCH_NAME


@dataclass(frozen=True)
class Quota:
    """Docker Hub's pull quota as last reported: ``remaining`` of ``limit`` per ``window_s``."""

    remaining: int
    limit: int
    window_s: int | None

    @property
    def low(self) -> bool:
        """Under 10 pulls or under 10 % left: worth a warning before the 429s start."""
        return self.remaining < 10 or self.remaining * 10 < self.limit


def parse_quota(limit: str | None, remaining: str | None) -> Quota | None:
    """``RateLimit-Limit`` / ``RateLimit-Remaining`` (``100;w=21600``), or None if either is
    missing or unreadable."""
    if not limit or not remaining:
        return None
    limit_match, remaining_match = _QUOTA.match(limit), _QUOTA.match(remaining)
    if limit_match is None or remaining_match is None:
        return None
    window = limit_match.group(2) or remaining_match.group(2)
    return Quota(
        int(remaining_match.group(1)), int(limit_match.group(1)), int(window) if window else None
    )


def say_duration(seconds: float) -> str:
    """A wait in words: "7 s", "12 min", "5 h 59 min"."""
    whole = max(0, round(seconds))
    if whole < 120:
        return f"{whole} s"
    minutes = round(whole / 60)
    if minutes < 120:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"
