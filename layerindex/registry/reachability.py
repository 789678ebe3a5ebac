"""Which hosts answer, remembered for a run: a registry that gave no answer is not asked again.

A crawl of many images from one registry that is down (offline, a dropped route, a server that
accepts and never answers) used to try every image in turn, five tries each. Now the first
image's requests find out, and every later request to that host fails at once with the same
message, until ``reset`` (the next crawl run). Hosts are the registry's, its token server's and
those its redirects lead to (a blob CDN): the transport checks each hop. A host is given up when

- a request to it got no answer after all its tries (connection refused, reset, timed out, a
  name server that did not answer),
- a try failed in a way another try will not mend (``NetworkError.permanent``: a host name that
  does not exist, a TLS certificate that fails verification), or
- it has answered nothing for ``give_up_after`` seconds of this run, counted from the first try
  since its last answer: a run spends at most that, plus one try's timeout, on a registry that
  is gone, however many images it lists and retries it allows.

A host that answered anything (any HTTP status) is reachable; its errors are the registry's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from layerindex.errors import NetworkError

GIVE_UP_AFTER = 120.0  # seconds without an answer before a host is given up for the run


class HostGivenUp(NetworkError):
    """A request not made: its host was given up earlier in this run."""


@dataclass
class _Host:
    failing_since: float | None = None  # when the first try since the last answer was made
    given_up: str | None = None  # why, once given up: the last failure's message


class Reachability:
    """Per-host answers and failures of one run; thread-safe."""

    def __init__(
        self, *, give_up_after: float = GIVE_UP_AFTER, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.give_up_after = give_up_after
        self.clock = clock
        self._lock = threading.Lock()
        self._hosts: dict[str, _Host] = {}

    def reset(self) -> None:
        """A new run: every host gets its chance again."""
        with self._lock:
            self._hosts.clear()

    def check(self, host: str) -> None:
        """Raise HostGivenUp, with the failure that gave it up, if ``host`` was given up."""
        with self._lock:
            state = self._hosts.get(host)
            why = state.given_up if state is not None else None
        if why is not None:
            raise HostGivenUp(
                f"{why}; {host} is not asked again in this run, the next run tries it again",
                host=host,
                permanent=True,
            )

    def answered(self, host: str) -> None:
        with self._lock:
            self._hosts.pop(host, None)

    def failing_too_long(self, host: str, tried_at: float) -> bool:
        """Note a try at ``host``, made at ``tried_at`` (``clock()``), that got no answer; True
        once the host has answered nothing for ``give_up_after`` seconds."""
        with self._lock:
            state = self._hosts.setdefault(host, _Host())
            if state.failing_since is None:
                state.failing_since = tried_at
            return self.clock() - state.failing_since >= self.give_up_after

    def give_up(self, host: str, why: str) -> None:
        """No more requests to ``host`` in this run: they fail with ``why``."""
        with self._lock:
            state = self._hosts.setdefault(host, _Host())
            state.given_up = state.given_up or why
