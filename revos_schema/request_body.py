"""Reading a request body for the webhook: its media type, its framing and its size limit.

Django reads at most `Content-Length` bytes of the WSGI input, so under a WSGI server a body sent
with `Transfer-Encoding: chunked` (which has no `Content-Length`) reads as empty through
`request.body`. A WSGI server that removes the chunked framing itself and ends the input where the
body ends says so with `wsgi.input_terminated` (gunicorn does): such a body is read from the input
here, never more than the limit and one byte. Django's development server does not (its input is
the connection, framing included), so there it cannot be read and is refused with 411 Length
Required. Under ASGI, Django has the whole body before the view runs, and reads it as usual.
"""

from __future__ import annotations

from typing import IO, Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, UnreadablePostError
from rest_framework import exceptions, status
from rest_framework.request import Request

# Bytes asked of the input at a time: reads stay small, whatever the limit.
READ_STEP = 64 * 1024


class BodyError(Exception):
    """A body that cannot be used, whatever it holds."""


class BodyTooLarge(BodyError):
    """The body holds more bytes than the limit."""


class BodyUnreadable(BodyError):
    """The input failed while the body was read (a broken chunked encoding, a dropped client).

    A client that stops sending the body makes the input fail too, under the production server
    (revos_schema.gunicorn_worker): its socket's read times out.
    """


STALLED = "The request body did not arrive: the client stopped sending it before its end."


class LengthRequired(exceptions.APIException):
    """A body without `Content-Length` on a server that cannot end it (411)."""

    status_code = status.HTTP_411_LENGTH_REQUIRED
    default_detail = (
        "This server cannot read a body sent without Content-Length; send Content-Length."
    )
    default_code = "length_required"


def media_type(request: HttpRequest | Request) -> str:
    """Return the `Content-Type` without its parameters, in lower case ("" when there is none)."""
    return str(request.META.get("CONTENT_TYPE") or "").split(";", 1)[0].strip().lower()


def is_json(request: HttpRequest | Request) -> bool:
    """Is the body declared `application/json` (with any parameters, such as a charset)?"""
    return media_type(request) == "application/json"


def declares_body(request: HttpRequest | Request) -> bool:
    """Does the request announce a body: a `Content-Length` above 0, or a transfer coding?"""
    return _declared_length(request.META) > 0 or "HTTP_TRANSFER_ENCODING" in request.META


def read_body(request: HttpRequest | Request, limit: int) -> bytes:
    """Return the body, reading at most `limit` + 1 bytes of it.

    Raise BodyTooLarge when it is longer than `limit`, BodyUnreadable when the input fails, and
    LengthRequired for a body without `Content-Length` that the WSGI server does not end.
    """
    meta = request.META
    if _declared_length(meta) > limit:
        raise BodyTooLarge
    if meta.get("CONTENT_LENGTH") or "wsgi.input" not in meta:
        # Framed by its length, or already read by an ASGI server: Django reads it. (wsgiref,
        # under Django's development server, sets CONTENT_LENGTH to "" when there is none.)
        raw = _django_body(request)
    elif meta.get("wsgi.input_terminated"):
        raw = _read_up_to(meta["wsgi.input"], limit + 1)
    elif "HTTP_TRANSFER_ENCODING" in meta:
        raise LengthRequired
    else:
        raw = b""
    if len(raw) > limit:
        raise BodyTooLarge
    return raw


def _declared_length(meta: dict[str, Any]) -> int:
    try:
        return int(meta.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def _read_up_to(stream: IO[bytes], size: int) -> bytes:
    """Read from `stream` until its end or `size` bytes, whichever comes first."""
    parts: list[bytes] = []
    remaining = size
    while remaining > 0:
        try:
            data = stream.read(min(remaining, READ_STEP))
        except TimeoutError as exc:
            raise BodyUnreadable(STALLED) from exc
        except Exception as exc:
            # The server's own errors: gunicorn raises its parser's exceptions (not OSError) for
            # a malformed chunk, and NoMoreData when the client goes away mid-body.
            raise BodyUnreadable(
                "The request body could not be read: its chunked encoding is broken or the "
                "connection ended before its last chunk."
            ) from exc
        if not data:
            break
        parts.append(data)
        remaining -= len(data)
    return b"".join(parts)


def _django_body(request: HttpRequest | Request) -> bytes:
    try:
        return request.body
    except RequestDataTooBig as exc:
        raise BodyTooLarge from exc
    except UnreadablePostError as exc:
        # Django turns the input's OSError (a timeout, a reset connection) into this one, once or
        # twice over: the original is at the end of the chain of causes.
        if _caused_by(exc, TimeoutError):
            raise BodyUnreadable(STALLED) from exc
        raise BodyUnreadable(
            "The request body could not be read: the connection failed before its end."
        ) from exc


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, kind):
            return True
        cause = cause.__cause__
    return False
