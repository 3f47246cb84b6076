"""`python -m maestro.clients.probe`: a gRPC health check for Kubernetes exec probes.

kubelet's built-in gRPC probe speaks plaintext only, so a server that serves TLS only (and may
ask for a client certificate) is probed from inside its own container with this instead. Exit
status 0 when the service answers SERVING, 1 for any other status or no answer.

    python -m maestro.clients.probe --port 50051 --service maestro.v1.RouteService \\
        --ca-file /etc/maestro/tls/ca.crt --server-name maestro-control-plane
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from maestro.clients._channel import channel_credentials


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return _parser().parse_args(argv)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m maestro.clients.probe", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--service", default="", help="Service to check; empty: the server.")
    parser.add_argument("--timeout-s", type=float, default=2.0)
    parser.add_argument("--ca-file", type=Path, help="TLS: the CA the server's cert chains to.")
    parser.add_argument("--cert-file", type=Path, help="Mutual TLS: a client certificate.")
    parser.add_argument("--key-file", type=Path, help="Mutual TLS: its private key.")
    parser.add_argument(
        "--server-name",
        help="TLS: the name the server's certificate is checked against (its Service name), "
        "since the probe dials the pod's loopback address.",
    )
    return parser


def check(args: argparse.Namespace) -> tuple[bool, str]:
    """(serving, what to print)."""
    target = f"{args.host}:{args.port}"
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    if args.ca_file or args.cert_file:
        credentials = channel_credentials(args.ca_file, args.cert_file, args.key_file)
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target)
    try:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout_s
        )
    except grpc.RpcError as error:
        return False, f"{error.code().name}: {error.details()}"
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return response.status == health_pb2.HealthCheckResponse.SERVING, status


def main(argv: list[str] | None = None) -> int:
    serving, said = check(parse_args(argv))
    print(said)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
