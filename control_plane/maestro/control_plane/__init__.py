"""Maestro control plane: the gRPC server, its configuration, auth, stores and services."""
