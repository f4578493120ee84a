"""Bounded connections for the HTTPS webhook and the plain-HTTP probe port.

aiohttp alone bounds neither the number of connections nor the time a client may take before its first
request: it has no header timeout, its keep-alive timeout is an hour, and asyncio gives every TLS connection a
256 KiB read buffer at accept time and waits 60 s for a handshake. A thousand clients that connect and never
finish a request therefore held ~270 MB and were never closed.

``GuardedSite`` replaces aiohttp's ``TCPSite``. It accepts plain TCP and wraps each connection itself:

- **cap**: at ``max_connections`` open connections, a new one takes the place of the oldest connection that
  has been open for over ``EVICT_AFTER`` seconds without ever starting a request (``evicted``); when there is
  none, the new one is aborted at once, before any TLS work (``rejected``). A client that floods the port with
  connections that never send anything thus mostly evicts itself, while the API server, which sends its
  request as soon as the handshake is done and then keeps its connection busy or idle in keep-alive, keeps its
  place;
- **deadlines**, enforced by one sweep a second rather than a timer per connection: a connection must finish
  its TLS handshake *and* send a complete request head within ``header_timeout`` of connecting; after an
  answer it may sit idle ``idle_timeout`` before the next request (keep-alive); while a request is being
  handled it is never cut (the handler bounds reading the body itself);
- **memory**: the TLS layer reads in ``TLS_READ_BUFFER`` chunks (32 KiB instead of asyncio's 256 KiB), which is
  still larger than one TLS record (16 KiB), so nothing is slower for an API server that sends whole requests.

The TLS context is looked up per connection, so a certificate reloaded in place (``certs.reload``) applies to
the next connection as before. ``request_started`` / ``request_finished`` are called by the server's
middleware with ``request.protocol``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from asyncio import sslproto
from typing import Any, Callable

from aiohttp import web

log = logging.getLogger("llmaz_serverless.connections")

TLS_READ_BUFFER = 32 * 1024
EVICT_AFTER = 1.0


class _BoundedTLS(sslproto.SSLProtocol):
    """asyncio's server-side TLS protocol with a smaller read buffer; tells its guard when it is gone."""

    max_size = TLS_READ_BUFFER

    def __init__(self, *args: Any, on_lost: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_lost = on_lost

    def connection_lost(self, exc: BaseException | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            self._on_lost()


class _Conn(asyncio.Protocol):
    """One accepted TCP connection. With TLS it hands the socket to a ``_BoundedTLS`` at once; without, it
    forwards everything to the aiohttp handler itself."""

    __slots__ = ("guard", "transport", "app", "deadline", "busy", "closed", "opened", "served")

    def __init__(self, guard: "ConnectionGuard") -> None:
        self.guard = guard
        self.transport: asyncio.Transport | None = None
        self.app: Any = None
        self.deadline = 0.0
        self.busy = 0
        self.closed = False
        self.opened = 0.0
        self.served = False      # a request has started on this connection

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        guard = self.guard
        if guard.closing or (len(guard.conns) >= guard.max_connections and not guard.evict_one()):
            guard.rejected += 1
            transport.abort()
            return
        self.transport = transport  # type: ignore[assignment]
        self.opened = guard.clock()
        self.deadline = self.opened + guard.header_timeout
        self.app = guard.handler_factory()
        guard.conns.add(self)
        guard.by_app[self.app] = self
        ctx = guard.ssl_context()
        if ctx is None:
            self.app.connection_made(transport)
            return
        tls = _BoundedTLS(asyncio.get_running_loop(), self.app, ctx, None, server_side=True,
                          ssl_handshake_timeout=guard.header_timeout, on_lost=self.forget)
        transport.set_protocol(tls)  # type: ignore[attr-defined]
        tls.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.app.data_received(data)

    def eof_received(self) -> bool | None:
        return self.app.eof_received()

    def pause_writing(self) -> None:
        self.app.pause_writing()

    def resume_writing(self) -> None:
        self.app.resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        try:
            if self.app is not None:
                self.app.connection_lost(exc)
        finally:
            self.forget()

    def forget(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.guard.conns.discard(self)
        self.guard.by_app.pop(self.app, None)


class ConnectionGuard:
    """The bookkeeping of one listening port: open connections, their deadlines, the counters."""

    def __init__(self, handler_factory: Callable[[], Any], ssl_context: Callable[[], Any], *,
                 max_connections: int, header_timeout: float, idle_timeout: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_connections < 1 or header_timeout <= 0 or idle_timeout <= 0:
            raise ValueError("max_connections, header_timeout and idle_timeout must be positive")
        self.handler_factory = handler_factory
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.clock = clock
        self.conns: set[_Conn] = set()
        self.by_app: dict[Any, _Conn] = {}
        self.rejected = 0         # connections refused at the cap
        self.evicted = 0          # connections that never sent a request, closed to make room at the cap
        self.timed_out = 0        # connections closed by a deadline
        self.closing = False

    def protocol(self) -> _Conn:
        return _Conn(self)

    def request_started(self, app_protocol: Any) -> None:
        conn = self.by_app.get(app_protocol)
        if conn is not None:
            conn.busy += 1
            conn.served = True

    def request_finished(self, app_protocol: Any) -> None:
        conn = self.by_app.get(app_protocol)
        if conn is not None:
            conn.busy = max(0, conn.busy - 1)
            conn.deadline = self.clock() + self.idle_timeout

    def evict_one(self) -> bool:
        """Close the oldest connection open for over EVICT_AFTER s that never started a request."""
        limit = self.clock() - EVICT_AFTER
        victim = None
        for conn in self.conns:
            if not conn.served and not conn.busy and conn.opened <= limit and (
                    victim is None or conn.opened < victim.opened):
                victim = conn
        if victim is None:
            return False
        self._abort(victim)
        self.evicted += 1
        return True

    def sweep(self) -> int:
        """Abort every connection past its deadline that is not inside a request; returns how many."""
        now = self.clock()
        late = [c for c in self.conns if not c.busy and now >= c.deadline]
        for conn in late:
            self._abort(conn)
        self.timed_out += len(late)
        return len(late)

    def close_idle(self) -> None:
        """Shutting down: no new connections; close those not inside a request."""
        self.closing = True
        for conn in [c for c in self.conns if not c.busy]:
            self._abort(conn)

    def close_all(self) -> None:
        self.closing = True
        for conn in list(self.conns):
            self._abort(conn)

    def _abort(self, conn: _Conn) -> None:
        if conn.transport is not None:
            conn.transport.abort()   # connection_lost follows on the next loop turn and forgets it
        conn.forget()

    async def run_sweeper(self, period: float = 1.0) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                self.sweep()
            except Exception:  # noqa: BLE001 - a sweep must never stop sweeping
                log.exception("connection sweep failed")


class GuardedSite(web.TCPSite):
    """``web.TCPSite`` whose connections go through a :class:`ConnectionGuard`.

    ``ssl_context``: None (plain HTTP), an ``ssl.SSLContext``, or an object with a ``.context`` attribute
    (``certs.reload.ReloadingSSLContext``), read at each connection."""

    def __init__(self, runner: web.BaseRunner, host: str | None, port: int, *, ssl_context: Any = None,
                 max_connections: int, header_timeout: float, idle_timeout: float, backlog: int = 128) -> None:
        super().__init__(runner, host, port, backlog=backlog)
        source = ssl_context

        def current_context() -> Any:
            return getattr(source, "context", source)

        server = runner.server
        assert server is not None
        self.guard = ConnectionGuard(server, current_context, max_connections=max_connections,
                                     header_timeout=header_timeout, idle_timeout=idle_timeout)
        self._sweeper: asyncio.Task | None = None

    @property
    def name(self) -> str:
        return f"{super().name} (guarded)"

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.guard.protocol, self._host, self._port,
                                                backlog=self._backlog)
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port
        self._sweeper = loop.create_task(self.guard.run_sweeper(), name=f"sweep-{self._bound_port}")

    async def stop(self) -> None:
        await super().stop()
        self.guard.close_idle()

    async def close(self) -> None:
        """After the runner's cleanup: nothing stays open, and the sweeper ends."""
        self.guard.close_all()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
