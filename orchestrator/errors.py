"""Every exception tunectl raises on purpose, in one tree.

    TunectlError
    ├── UserError                 one line: what, where, how to fix; the CLI prints it and exits 2
    │   ├── SpecError             a job spec is invalid (file, field, reason)
    │   ├── DatasetError          a dataset is unusable (file:line, reason)
    │   ├── UnknownProvider       the spec names a provider no plugin provides
    │   ├── MissingCredential     a provider key, webhook secret or secret file is not configured
    │   ├── JobNotFound           no job has that id
    │   ├── IdempotencyConflict   an idempotency key was reused with a different spec
    │   ├── CannotCancel          the job is past the point where it can be cancelled
    │   ├── InvalidCursor         a list cursor this server never gave out
    │   └── DatabaseNotMigrated   the database schema is not at the code's revision
    ├── BlobStoreError            the dataset store (an object store) failed; worth retrying
    ├── WebhookRejected           an inbound provider webhook failed verification; nothing changed
    ├── DestinationRefused        the SSRF guard refused a webhook's destination; nothing was sent
    ├── TransitionError           a state change was refused and nothing was written
    │   ├── IllegalTransition     the move is not in states.TRANSITIONS
    │   └── StaleTransition       the job was no longer where the caller thought (lost the CAS)
    └── ProviderError             a provider call failed (never carries headers or keys)
        ├── RetryableProviderError    worth trying again later
        │   ├── RateLimited           429 (retry_after from the response)
        │   └── ProviderUnavailable   408/409/5xx, timeouts, connection errors
        └── PermanentProviderError    trying again will not help
            ├── ProviderAuthError     401/403
            └── ProviderRejected      400/404/422 and other 4xx

Constructors take plain keyword values so that exceptions survive pickling across processes.
``one_line`` describes any exception in one line, for a log or a wrapping error.
"""

from __future__ import annotations


def one_line(exc: BaseException) -> str:
    """``<class>: <first line of the message>``, for a log line or an error that wraps it."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class TunectlError(Exception):
    """Base class of every error tunectl raises on purpose."""


class UserError(TunectlError):
    """Something the user can fix; the message says what, where and how."""


class SpecError(UserError):
    """A job spec is invalid."""

    def __init__(self, source: str, field: str, reason: str) -> None:
        self.source, self.field, self.reason = source, field, reason
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {reason}")

    def __reduce__(self) -> tuple[type[SpecError], tuple[str, str, str]]:
        return (SpecError, (self.source, self.field, self.reason))


class DatasetError(UserError):
    """A dataset is unusable."""


class UnknownProvider(UserError):
    """No installed plugin provides that provider."""


class MissingCredential(UserError):
    """A provider's credential or a webhook signing secret is not configured, or a
    ``<NAME>_FILE`` cannot be read."""


class JobNotFound(UserError):
    """No job has that id."""


class IdempotencyConflict(UserError):
    """The idempotency key belongs to a job with a different spec."""


class CannotCancel(UserError):
    """The job cannot be cancelled in its state (or kept changing while we tried)."""


class InvalidCursor(UserError):
    """A list's cursor is not one this server gave out."""


class DatabaseNotMigrated(UserError):
    """The database schema is not at this version's revision; run `tunectl db upgrade`."""


class BlobStoreError(TunectlError):
    """The dataset blob store could not be reached or returned something wrong."""


class WebhookRejected(TunectlError):
    """An inbound provider webhook is unsigned, stale or badly signed; nothing was changed."""


class DestinationRefused(TunectlError):
    """The SSRF guard refused where a webhook would go (the message says why); nothing was
    sent."""


class TransitionError(TunectlError):
    """A state change was refused; nothing was written."""


class IllegalTransition(TransitionError):
    """The requested move is not in states.TRANSITIONS."""


class StaleTransition(TransitionError):
    """The job was not in the state/version the caller expected (a concurrent writer won)."""


class ProviderError(TunectlError):
    """A provider call failed."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        operation: str = "",
        status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.message, self.provider, self.operation = message, provider, operation
        self.status, self.request_id, self.retry_after = status, request_id, retry_after
        super().__init__(message)

    def __str__(self) -> str:
        head = " ".join(p for p in (self.provider, self.operation) if p)
        code = f" HTTP {self.status}" if self.status is not None else ""
        rid = f" (request {self.request_id})" if self.request_id else ""
        return f"{head}{code}: {self.message}{rid}" if head or code else self.message

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_provider_error,
            (type(self), self.message, self.provider, self.operation, self.status,
             self.request_id, self.retry_after),
        )


def _rebuild_provider_error(
    cls: type[ProviderError], message: str, provider: str, operation: str,
    status: int | None, request_id: str | None, retry_after: float | None,
) -> ProviderError:
    return cls(message, provider=provider, operation=operation, status=status,
               request_id=request_id, retry_after=retry_after)


class RetryableProviderError(ProviderError):
    """Worth trying again later (honour retry_after when set)."""

    retryable = True


class RateLimited(RetryableProviderError):
    """The provider throttled us (HTTP 429)."""


class ProviderUnavailable(RetryableProviderError):
    """The provider timed out, could not be reached, or answered 408/409/5xx."""


class PermanentProviderError(ProviderError):
    """Trying again will not help."""


class ProviderAuthError(PermanentProviderError):
    """The provider refused our credentials (401/403)."""


class ProviderRejected(PermanentProviderError):
    """The provider rejected the request as invalid (400/404/422 …)."""
