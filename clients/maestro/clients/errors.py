"""Readable errors for callers: a failed RPC as one exception with its `google.rpc` details."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class MaestroRpcError(grpc.RpcError):
    """A Maestro RPC failed.

    `code()` is the gRPC status; `reason`, `domain` and `metadata` come from the server's
    `google.rpc.ErrorInfo`; `field_violations` from `google.rpc.BadRequest` (bad input);
    `retry_delay_s` from `google.rpc.RetryInfo` (how long to wait before retrying, when known).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: dict[str, str] | None = None,
        field_violations: tuple[FieldViolation, ...] = (),
        retry_delay_s: float | None = None,
    ) -> None:
        self._code = code
        self.retry_delay_s = retry_delay_s
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata = metadata or {}
        self.field_violations = field_violations
        super().__init__(str(self))

    def code(self) -> grpc.StatusCode:
        """The gRPC status code (a method, as on every `grpc.RpcError`)."""
        return self._code

    def details(self) -> str:
        """The status message (a method, as on every `grpc.RpcError`)."""
        return self.message

    def __str__(self) -> str:
        text = f"{self._code.name}: {self.message}"
        if self.reason:
            text += f" [{self.reason}]"
        for violation in self.field_violations:
            text += f"\n  {violation.field}: {violation.description}"
        return text

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> MaestroRpcError:
        call: Any = error
        code: grpc.StatusCode = call.code()
        message: str = call.details() or ""
        reason, domain, metadata = "", "", {}
        violations: list[FieldViolation] = []
        retry_delay_s: float | None = None
        try:
            status = rpc_status.from_call(call)
        except ValueError:  # details that contradict the status line: keep the status line
            status = None
        for detail in status.details if status else ():
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_delay_s = retry.retry_delay.ToNanoseconds() / 1e9
        return cls(
            code,
            message,
            reason=reason,
            domain=domain,
            metadata=metadata,
            field_violations=tuple(violations),
            retry_delay_s=retry_delay_s,
        )
