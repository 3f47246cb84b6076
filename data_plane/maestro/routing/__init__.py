"""The routing core: everything a data plane needs to decide, and nothing that stores or serves.

A route config (`spec`) and its Rego modules (`policy`) compile into an immutable snapshot
(`snapshots`, `layers`); the engine scores a request against it (`engine`), the decider adds
content tags (`tagging`) and live signals (`signals`). Pure and in-process: no I/O, no gRPC. The
control plane compiles snapshots to validate and serve them; a data plane compiles the same
snapshots it receives on WatchConfig.
"""
