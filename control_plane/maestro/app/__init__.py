"""The composition root: the `maestro` command line and the processes it starts.

This is the only package that imports both planes. `maestro up` (`server.py`) assembles the
control plane's services with an in-process data plane; `maestro data-plane`
(`data_plane_server.py`) runs a data plane that follows a remote control plane. Adapters
between the planes (the graph runtime's model calls) live here too.
"""

from maestro.app.cli import app, main

__all__ = ["app", "main"]
