"""The `maestro` command line: run the embedded default, administer projects, call services."""

from maestro.control_plane.cli.app import app, main

__all__ = ["app", "main"]
