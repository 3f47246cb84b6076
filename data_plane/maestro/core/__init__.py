"""The common core both planes build on: errors and their gRPC status, resource names, the
authenticated principal, paging and filters, settings sections, telemetry, logs, tallies, and
the gRPC server plumbing (`core.rpc`). It imports neither plane."""
