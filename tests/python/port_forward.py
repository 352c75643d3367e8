"""A TCP port forward on loopback, as a container's published port or a NAT
in front of a broker: clients connect to its own port and it relays the
bytes (TLS included, untouched) to the target port.

It records the local address of every connection it opens to the target:
a broker reports its client's address in topic stats (`address` of a
publisher or consumer), so a test tells from those stats whether a client
reached the broker through this forward (an advertised listener's URL) or
some other way.
"""

from __future__ import annotations

import socket
import threading

CHUNK_BYTES = 64 * 1024


class PortForward:
    """Listens on 127.0.0.1:`port` (chosen by the system); each connection
    is relayed to 127.0.0.1:`target_port`, which may be set after the start
    (the broker behind it may choose its port later)."""

    def __init__(self, target_port: int | None = None):
        self.target_port = target_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._lock = threading.Lock()
        self._upstream_addrs: list[str] = []
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name=f"forward-{self.port}").start()

    def upstream_addresses(self) -> set[str]:
        """`ip:port` of each connection made to the target so far (the
        client address the target sees)."""
        with self._lock:
            return set(self._upstream_addrs)

    def close(self) -> None:
        """Stops accepting and closes every relayed connection."""
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        for s in [self._server, *sockets]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            try:
                assert self.target_port is not None, "a port forward without a target"
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            ip, port = upstream.getsockname()[:2]
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._upstream_addrs.append(f"{ip}:{port}")
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=_relay, args=(src, dst), daemon=True).start()


def _relay(src: socket.socket, dst: socket.socket) -> None:
    """Copies `src` to `dst` until `src` ends, then ends `dst`'s writing side."""
    try:
        while data := src.recv(CHUNK_BYTES):
            dst.sendall(data)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass
