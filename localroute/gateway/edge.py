"""The HTTP edge below the app: a request the HTTP parser cannot read never reaches Starlette, so
uvicorn answers it itself, in plain text. This protocol answers in the OpenAI error shape instead,
so a client's SDK can still parse what went wrong (400 `invalid_http_request`)."""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from localroute.errors import InvalidRequestError

_BODY = json.dumps(
    InvalidRequestError(
        "The request is not valid HTTP/1.1 and could not be read.", code="invalid_http_request"
    ).body()
).encode()


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the malformed-request answer in the API's error shape."""

    def send_400_response(self, msg: str) -> None:  # uvicorn's hook for a parser error
        content = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(_BODY)).encode("ascii") + b"\r\n",
            b"connection: close\r\n\r\n",
            _BODY,
        ]
        self.transport.write(b"".join(content))
        self.transport.close()
