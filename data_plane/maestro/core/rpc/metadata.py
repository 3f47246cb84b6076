"""Request metadata Maestro reads besides credentials."""

from __future__ import annotations

from typing import Any

import grpc

OBJECTIVES_HEADER = "x-maestro-objectives"
"""Per-call routing objectives, such as `quality,latency` or `cost=0.7,quality=0.3`."""


def objectives_header(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == OBJECTIVES_HEADER:
            return str(value)
    return ""
