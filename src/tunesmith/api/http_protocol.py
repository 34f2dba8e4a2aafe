"""uvicorn's h11 protocol with header and body deadlines.

uvicorn (0.54, h11) times out idle keep-alive connections only: a client that sends part of
a request's headers, or part of its body, holds the connection (and, after enough of them,
the server's file descriptors) for as long as it likes. Here the whole head of a request
must arrive within `header_timeout` seconds of the connection opening or of the previous
response, and a body may not stall for `body_timeout` seconds while the server is ready to
read it. A late head is answered 408 and closed; a stalled body's connection is closed,
which the application sees as a client disconnect.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

_LATE = b"The request headers did not arrive in time.\n"
REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_LATE), _LATE)
)


class DeadlineH11Protocol(H11Protocol):
    header_timeout: ClassVar[float] = 10.0
    body_timeout: ClassVar[float] = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._phase: str | None = None  # "head", "body" or None (handled elsewhere)
        self._deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._follow_request()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def _follow_request(self) -> None:
        """Arms the deadline of the phase the connection is in: reading a head (one deadline
        for the whole head), reading a body (renewed by every chunk), or neither."""
        if self.transport.is_closing():
            return self._cancel_deadline()
        their_state = self.conn.their_state
        if their_state is h11.IDLE and self.conn.our_state is h11.IDLE:
            if self._phase != "head":
                self._arm("head", self.header_timeout, self._head_too_late)
        elif their_state is h11.SEND_BODY:
            self._arm("body", self.body_timeout, self._body_stalled)
        else:
            self._phase = None
            self._cancel_deadline()

    def _arm(self, phase: str, seconds: float, handler) -> None:
        self._cancel_deadline()
        self._phase = phase
        self._deadline = self.loop.call_later(seconds, handler)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_too_late(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.conn.trailing_data[0]:  # part of a head arrived: say why it is refused
            self.transport.write(REQUEST_TIMEOUT)
        self.transport.close()

    def _body_stalled(self) -> None:
        self._deadline = None
        if self.flow.read_paused:  # the application is not reading: the client may wait
            return self._arm("body", self.body_timeout, self._body_stalled)
        if not self.transport.is_closing():
            self.transport.close()


def deadline_protocol(header_timeout: float, body_timeout: float) -> type[DeadlineH11Protocol]:
    """The protocol class to give uvicorn's `http` setting."""
    return type(
        "ConfiguredDeadlineH11Protocol",
        (DeadlineH11Protocol,),
        {"header_timeout": header_timeout, "body_timeout": body_timeout},
    )
