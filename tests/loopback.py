"""The small HTTP servers the tests run on loopback (token endpoint, blob host, fault proxy)."""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class OwnedHTTPServer(ThreadingHTTPServer):
    """A threaded server whose handlers reach the object that runs it as ``server.owner``."""

    daemon_threads = True
    owner: Any

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], owner: Any
    ) -> None:
        self.owner = owner
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up on a cut, stalled or refused response is what these tests do.
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)
