"""Typed domain errors and their one mapping to `google.rpc.Status` (AIP-193).

Domain code raises these (nothing here imports grpc); `rpc.interceptors` turns them into a
gRPC status carrying `ErrorInfo` (reason, domain, metadata) and, for bad input, `BadRequest` field
violations. Anything else that escapes a handler goes through `internal_error`, the one path
for both the gRPC interceptor and the HTTP ingress: its traceback is logged with a correlation
id, and the caller gets INTERNAL with a fixed message and that id, never the exception's text.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import structlog
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

ERROR_DOMAIN = "maestro.dev"
log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request: `field` is a path such as `api_key.display_name`."""

    field: str
    description: str


class MaestroError(Exception):
    """Base of every error Maestro reports to a caller.

    `reason` is a stable UPPER_SNAKE_CASE identifier clients may branch on; `message` is for
    people and must not contain secrets or internals.
    """

    code: int = code_pb2.UNKNOWN

    def __init__(
        self, message: str, *, reason: str, metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})

    def details(self) -> list[any_pb2.Any]:
        """The `google.rpc` detail messages this error carries, ErrorInfo first."""
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata
        )
        packed = any_pb2.Any()
        packed.Pack(info)
        return [packed]

    def to_status(self) -> status_pb2.Status:
        return status_pb2.Status(code=self.code, message=self.message, details=self.details())


class InvalidArgument(MaestroError):
    """The request is malformed; `violations` say which fields and why."""

    code = code_pb2.INVALID_ARGUMENT

    def __init__(
        self,
        violations: Iterable[FieldViolation],
        *,
        reason: str = "INVALID_ARGUMENT",
        message: str | None = None,
    ) -> None:
        self.violations = tuple(violations)
        if not self.violations:
            raise ValueError("InvalidArgument needs at least one field violation")
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(message or f"invalid request: {summary}", reason=reason)

    def details(self) -> list[any_pb2.Any]:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in self.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        return [*super().details(), packed]


class Unauthenticated(MaestroError):
    """No credential, or one that does not identify a live API key."""

    code = code_pb2.UNAUTHENTICATED


class PermissionDenied(MaestroError):
    """The caller is known but may not touch this resource (e.g. another project's)."""

    code = code_pb2.PERMISSION_DENIED


class NotFound(MaestroError):
    """The named resource does not exist (in the caller's project)."""

    code = code_pb2.NOT_FOUND


class AlreadyExists(MaestroError):
    """A resource with that name exists already."""

    code = code_pb2.ALREADY_EXISTS


class FailedPrecondition(MaestroError):
    """The system is not in a state where the operation can run."""

    code = code_pb2.FAILED_PRECONDITION


class Aborted(MaestroError):
    """A concurrency conflict (etag mismatch, lost race): read again and retry."""

    code = code_pb2.ABORTED


class ResourceExhausted(MaestroError):
    """A quota, budget or capacity limit was hit; `retry_delay_s`, when known, travels as
    `google.rpc.RetryInfo` (and HTTP `Retry-After`)."""

    code = code_pb2.RESOURCE_EXHAUSTED

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        metadata: Mapping[str, str] | None = None,
        retry_delay_s: float | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_delay_s = retry_delay_s

    def details(self) -> list[any_pb2.Any]:
        found = super().details()
        if self.retry_delay_s is not None:
            retry = error_details_pb2.RetryInfo()
            retry.retry_delay.FromNanoseconds(int(max(self.retry_delay_s, 0.0) * 1e9))
            packed = any_pb2.Any()
            packed.Pack(retry)
            found.append(packed)
        return found


class Unavailable(MaestroError):
    """Nothing could serve the call now (every deployment tried failed); retrying later may
    succeed."""

    code = code_pb2.UNAVAILABLE


class Unimplemented(MaestroError):
    """The method is part of the contract but its capability is not built in this release."""

    code = code_pb2.UNIMPLEMENTED


class Internal(MaestroError):
    """An unexpected failure as the caller sees it: a fixed message and a correlation id to find
    the logged traceback by. Made by `internal_error`, once the traceback is logged."""

    code = code_pb2.INTERNAL

    def __init__(self, correlation_id: str) -> None:
        super().__init__(
            f"internal error (correlation id {correlation_id}); the server log has details",
            reason="INTERNAL",
            metadata={"correlation_id": correlation_id},
        )
        self.correlation_id = correlation_id


def internal_error(event: str, **context: object) -> Internal:
    """The one way an unexpected exception becomes an answer. Call it in the `except` block:
    it logs the exception being handled, traceback included, as `event` with `context` and a
    new correlation id, and returns the sanitized error to send instead."""
    correlation_id = uuid.uuid4().hex[:16]
    log.exception(event, correlation_id=correlation_id, **context)
    return Internal(correlation_id)
