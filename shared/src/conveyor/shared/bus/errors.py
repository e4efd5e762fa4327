"""The bus's own errors: what a service catches instead of nats-py's.

Every call of the bus raises a :class:`BusError` subclass (or the caller's own exceptions):

  NotFound     the key, message, stream or consumer is not there
  Conflict     a compare-and-set lost: the key was written (or created) meanwhile
  Timeout      no answer in time (also a builtin ``TimeoutError``)
  Unavailable  no server, no responders, no stream, connection closed or draining: try later
  TooLarge     the message is over the server's max_payload
  BadRequest   JetStream refused the request as malformed (an invalid subject, a config clash)

``code``/``err_code``/``description`` carry JetStream's answer where there was one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import nats.errors
import nats.js.errors


class BusError(Exception):
    """Anything the bus could not do."""

    def __init__(self, description: str = "", *, code: int = 0, err_code: int = 0) -> None:
        super().__init__(description or type(self).__name__)
        self.description = description
        self.code = code
        self.err_code = err_code


class NotFound(BusError):
    """The key, message, stream or consumer is not there (a deleted key counts as none)."""


class Conflict(BusError):
    """A create found the key already set, or an update's expected revision was not the last."""


WrongRevision = Conflict


class Timeout(BusError, TimeoutError):
    """No answer within the timeout; the operation may or may not have happened."""


class Unavailable(BusError):
    """The bus cannot serve this now (no connection, no responders, no stream, leader
    changing): a retry later may succeed."""


class TooLarge(BusError):
    """Headers and body together are over the server's max_payload."""


class BadRequest(BusError):
    """Refused as malformed (an invalid subject or header, a config the server rejects)."""


# JetStream's err_codes for "the last sequence of that subject is not the one you said".
WRONG_LAST_SEQUENCE = (10071, 10164)

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.NoServersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
)


def translate(exc: BaseException) -> BaseException:
    """The bus error for a nats-py error; anything else is returned as it is."""
    if isinstance(exc, BusError) or not isinstance(exc, nats.errors.Error):
        return exc
    description = getattr(exc, "description", None) or str(exc)
    code = getattr(exc, "code", None) or 0
    err_code = getattr(exc, "err_code", None) or 0
    kind: type[BusError]
    if isinstance(exc, nats.js.errors.KeyWrongLastSequenceError) or err_code in WRONG_LAST_SEQUENCE:
        kind = Conflict
    elif isinstance(exc, nats.js.errors.NotFoundError | nats.js.errors.NoKeysError):
        kind = NotFound
    elif isinstance(exc, nats.errors.TimeoutError):
        kind = Timeout
    elif isinstance(exc, _UNAVAILABLE):
        kind = Unavailable
    elif isinstance(exc, nats.errors.MaxPayloadError):
        kind = TooLarge
    elif isinstance(
        exc,
        nats.js.errors.BadRequestError
        | nats.errors.BadSubjectError
        | nats.errors.BadHeaderError
        | nats.js.errors.InvalidKeyError
        | nats.js.errors.InvalidBucketNameError,
    ):
        kind = BadRequest
    else:
        kind = BusError
    return kind(description, code=int(code), err_code=int(err_code))


@contextlib.contextmanager
def mapped() -> Iterator[None]:
    """Raise nats-py's errors inside the block as the bus's (the original is the cause)."""
    try:
        yield
    except nats.errors.Error as exc:
        raise translate(exc) from exc
