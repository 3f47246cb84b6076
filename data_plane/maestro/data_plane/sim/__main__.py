"""`python -m maestro.data_plane.sim [--host H] [--port P] [--profile FILE]`: the same as
`maestro sim-provider`, for hosts (load generators, containers) that run the module directly."""

from __future__ import annotations

import argparse
import sys

from maestro.data_plane.sim.profile import ProfileError
from maestro.data_plane.sim.server import DEFAULT_PORT, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m maestro.data_plane.sim",
        description="Serve the simulated OpenAI-compatible provider until SIGTERM or SIGINT.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument("--profile", help="fault profile, YAML or JSON")
    args = parser.parse_args(argv)
    try:
        run(args.host, args.port, args.profile)
    except ProfileError as error:
        print(error, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
