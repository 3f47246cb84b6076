"""The one internal-error path (`errors.internal_error`) that the gRPC interceptor and the HTTP
ingress share: the traceback goes to the log with a correlation id, the caller gets only a fixed
message and that id. Over the wire: tests/test_server.py (INTERNAL) and tests/test_inference.py
(HTTP 500, and the error event of a stream that had begun)."""

from __future__ import annotations

from google.rpc import code_pb2, error_details_pb2
from structlog.testing import capture_logs

from maestro.core.errors import ERROR_DOMAIN, internal_error


def test_internal_error_logs_the_traceback_and_returns_only_a_fixed_message() -> None:
    with capture_logs() as logs:
        try:
            raise RuntimeError("secret internals")
        except RuntimeError:
            error = internal_error("test.unhandled_error", method="/x.v1.XService/Y")
    [entry] = logs
    correlation_id = entry["correlation_id"]
    assert entry["event"] == "test.unhandled_error"
    assert entry["method"] == "/x.v1.XService/Y"
    assert entry["exc_info"] is True
    assert error.correlation_id == correlation_id
    assert error.message == (
        f"internal error (correlation id {correlation_id}); the server log has details"
    )
    status = error.to_status()
    assert status.code == code_pb2.INTERNAL
    assert "secret" not in str(status)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "INTERNAL",
        ERROR_DOMAIN,
        {"correlation_id": correlation_id},
    )
