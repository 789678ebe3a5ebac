"""The small servers the tests run on loopback (token endpoint, blob host, fault proxy, a
server that never answers, a port that refuses)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
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


class SilentServer:
    """Accepts connections on loopback and never says a word (a hung server, a proxy whose
    upstream is gone); counts the connections. With ``tls``, it completes the TLS handshake
    first (if the client goes on with it) and then says nothing. ``stop`` closes them all."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._tls = tls
        self.host = f"127.0.0.1:{self._socket.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # closed by stop()
            while True:
                connection = self._socket.accept()[0]
                self.accepted.append(connection)
                if self._tls is not None:
                    threading.Thread(
                        target=self._handshake, args=(connection,), daemon=True
                    ).start()

    def _handshake(self, connection: socket.socket) -> None:
        assert self._tls is not None
        with contextlib.suppress(OSError):  # the client refused the certificate
            self._tls.wrap_socket(connection, server_side=True)

    def stop(self) -> None:
        self._socket.close()
        for connection in self.accepted:
            connection.close()


@contextlib.contextmanager
def refusing_host() -> Iterator[str]:
    """``127.0.0.1:PORT`` where nothing listens (connection refused); the port is held bound,
    not listening, so that nothing else takes it meanwhile."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{bound.getsockname()[1]}"
