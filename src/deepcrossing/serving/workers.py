"""Running several server processes on one port, each with its own listening socket (``serve --workers N``).

``uvicorn.run(..., workers=N)`` binds ONE socket in the parent and hands it to every worker: the workers race
to ``accept`` on one queue, and the first one awake takes every pending connection. Keep-alive clients (a
proxy's pool, a load generator) then all land on one worker while the others idle: measured with
``benchmarks/serve.py``, 2 workers, 8 keep-alive connections, one worker burned 10.2 CPU-s of a 10 s run and
the other 0.03, 309 req/s, no more than one worker gives. On Linux :func:`run_workers` instead gives each
worker a socket of its own in one ``SO_REUSEPORT`` group, so the kernel spreads connections over the workers
by their address hash; uvicorn's supervisor still starts, watches and restarts them (a restarted worker binds
its own socket the same way). The parent holds the port bound (not listening) for the supervisor's lifetime,
so no other program takes it between restarts and ``--port 0`` resolves once for all workers. Elsewhere (no
``SO_REUSEPORT``) it falls back to uvicorn's shared socket.

The workers' sockets are created with ``IPPROTO_TCP`` so that asyncio turns Nagle's algorithm off on each
accepted connection (a socket created with protocol 0, as a pre-bound socket usually is, keeps it on, and
a keep-alive response written in two parts then waits for the client's delayed ACK).

Example:
    >>> config = uvicorn.Config("deepcrossing.serving.app:app_from_env", factory=True, workers=2)  # doctest: +SKIP
    >>> run_workers(config)                                                                       # doctest: +SKIP
"""

from __future__ import annotations

import socket
import sys

import uvicorn
from uvicorn.supervisors import multiprocess

from deepcrossing.errors import DeepCrossingError

__all__ = ["reuse_port_supported", "reuse_port_socket", "run_workers"]

BACKLOG = 2048


def reuse_port_supported() -> bool:
    """Whether connections are spread over the sockets of a ``SO_REUSEPORT`` group here (Linux)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def reuse_port_socket(host: str, port: int, *, listen: bool = True) -> socket.socket:
    """A TCP socket bound to ``(host, port)`` in the port's ``SO_REUSEPORT`` group, listening unless told not.

    Raises:
        DeepCrossingError: the address cannot be bound (in use by a socket outside the group, or not local).
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         proto=socket.IPPROTO_TCP)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        if listen:
            sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise DeepCrossingError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


class _OwnSocketProcess(multiprocess.Process):
    """A uvicorn worker that listens on a socket of its own in the port's ``SO_REUSEPORT`` group (``config.host``
    and ``config.port``, the port already resolved); the health pings of the supervisor are uvicorn's."""

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # pragma: no cover - in the worker
        super().target(sockets=[reuse_port_socket(self.config.host, self.config.port)])


def run_workers(config: uvicorn.Config) -> None:
    """Serve ``config`` (``workers`` > 1, an app import string) in worker processes, one socket each on Linux.

    Raises:
        DeepCrossingError: the port cannot be bound.
    """
    if not reuse_port_supported():
        multiprocess.Multiprocess(config, sockets=[config.bind_socket()]).run()   # what uvicorn.run does
        return
    holder = reuse_port_socket(config.host, config.port, listen=False)   # fails early when the port is taken
    config.port = holder.getsockname()[1]
    # The supervisor builds its workers from its module's ``Process`` (at start and at every restart): ours,
    # for as long as it runs. A spawned worker unpickles its target from this module, not from that name.
    shared = multiprocess.Process
    multiprocess.Process = _OwnSocketProcess  # type: ignore[misc]
    try:
        multiprocess.Multiprocess(config, sockets=[]).run()
    finally:
        multiprocess.Process = shared  # type: ignore[misc]
        holder.close()
