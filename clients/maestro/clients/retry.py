"""Client retry policy derived from the contract: only methods the protos mark idempotent.

A method is retried (UNAVAILABLE only, exponential backoff, at most 4 attempts) when its proto
says `option idempotency_level = NO_SIDE_EFFECTS` or `IDEMPOTENT`. gRPC's own retry machinery
does the work, configured through the channel's service config.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from google.protobuf import descriptor, descriptor_pb2

_IDEMPOTENT = (
    descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
    descriptor_pb2.MethodOptions.IDEMPOTENT,
)
RETRY_POLICY = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def idempotent_methods(files: Iterable[descriptor.FileDescriptor]) -> list[tuple[str, str]]:
    found = []
    for file in files:
        for service in file.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if options.idempotency_level in _IDEMPOTENT and not method.client_streaming:
                    found.append((service.full_name, method.name))
    return found


def service_config(files: Iterable[descriptor.FileDescriptor]) -> str:
    names = [{"service": s, "method": m} for s, m in idempotent_methods(files)]
    config = {"methodConfig": [{"name": names, "retryPolicy": RETRY_POLICY}]} if names else {}
    return json.dumps(config)
