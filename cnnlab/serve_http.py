"""The HTTP/1.1 connection of `cnnlab serve`: uvicorn's, with its own answers in JSON and a bounded head.

uvicorn answers a request it cannot parse by itself, before the app sees it, and in plain
text; and its httptools parser keeps a request line and header of any size in memory. The
protocol here answers those as the app answers everything, `{"detail": "..."}`, and refuses a
head (request line and header fields) over `MAX_HEAD_BYTES` with 431 as it arrives.

Example:
    uvicorn.Config(app, http=JsonErrorsProtocol)
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

# Set in a request's ASGI state when this protocol answered it while the app was reading it (a
# malformed chunked body): the protocol's warning is then its one log line, not the app's.
ANSWERED = "cnnlab_answered"
MAX_HEAD_BYTES = 32 * 2**10  # nginx's default for a whole header (4 x 8 KiB); a browser's is 1-8 KiB
_END_OF_HEAD = b"\r\n\r\n"


class JsonErrorsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering malformed requests with JSON and heads over `MAX_HEAD_BYTES` with 431.

    Args: those of `uvicorn.protocols.http.httptools_impl.HttpToolsProtocol` (uvicorn passes them).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._head: int | None = 0  # bytes of the head received so far; None once it is complete
        self._tail = b""  # its last bytes: the blank line that ends it may span two reads

    def data_received(self, data: bytes) -> None:
        if self._head is not None:
            joined = self._tail + data
            end = joined.find(_END_OF_HEAD)
            self._head += len(data) if end < 0 else end + len(_END_OF_HEAD) - len(self._tail)
            if self._head > MAX_HEAD_BYTES:
                self.logger.warning("refused a request whose head is over %d bytes", MAX_HEAD_BYTES)
                self._answer(431, f"the request line and header fields are larger than the server's limit of "
                                  f"{MAX_HEAD_BYTES // 2**10} KiB.")
                return
            self._tail = joined[-(len(_END_OF_HEAD) - 1):]
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._head = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._head, self._tail = 0, b""  # a next request on this connection starts its head
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to what its parser refuses (it has logged `msg` as a warning)."""
        self._answer(400, "the request is not valid HTTP/1.1 (the server could not parse it); "
                          "see /docs for the API.")

    def _answer(self, status: int, detail: str) -> None:
        """Send `{"detail": detail}` with `status` and close the connection (the rest of the request is not read)."""
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.scope["state"][ANSWERED] = status
        body = json.dumps({"detail": detail}).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.extend([b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                     b"connection: close\r\n", b"\r\n", body])
        self.transport.write(b"".join(head))
        self.transport.close()
