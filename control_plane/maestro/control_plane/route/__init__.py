"""RouteService: routing config, Rego policy compilation, content tagging and the decision engine.

The decision engine (`engine.py`) is pure and in-process: the data plane embeds it and follows
config snapshots; nothing in it does I/O.
"""
