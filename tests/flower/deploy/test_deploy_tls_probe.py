"""The client's TLS probe tells a TLS server from a plaintext one and from no server.

A plaintext SuperNode refused by a TLS server reports a failed connection whose text
varies with timing (CI once saw only "Giving up reconnection"), so ``fedlab client
--insecure`` asks the server for a TLS handshake before it explains the failure.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from fedlab.flower.deploy.certificates import init_certificates
from fedlab.flower.deploy.client import server_speaks_tls


@contextmanager
def listening(handle) -> Iterator[int]:
    """A TCP server on 127.0.0.1 that passes each connection to ``handle``; yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn, suppress(OSError, ssl.SSLError):
                handle(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def test_a_tls_server_is_recognised(tmp_path):
    files = init_certificates(tmp_path / "certs", devices=0)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.server_cert, files.server_key)

    def handshake(conn: socket.socket) -> None:
        conn.settimeout(5)
        with context.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)

    with listening(handshake) as port:
        assert server_speaks_tls(f"127.0.0.1:{port}")


def test_a_plaintext_server_and_no_server_are_not_tls():
    def plain(conn: socket.socket) -> None:
        conn.settimeout(5)
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    with listening(plain) as port:
        assert not server_speaks_tls(f"127.0.0.1:{port}")
    with socket.create_server(("127.0.0.1", 0)) as unused:
        free = unused.getsockname()[1]
    assert not server_speaks_tls(f"127.0.0.1:{free}")
    assert not server_speaks_tls("127.0.0.1:not-a-port")
