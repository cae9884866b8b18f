"""The ``are`` command line: ``are serve`` runs the sidecar.

Exit statuses: 0 after a clean shutdown, 2 for an unknown or invalid option
(the message names it), 1 when the sidecar cannot start (for example another
sidecar holds the data folder).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import uvloop

from are_core.storage import DataDirLockedError
from sidecar._config import ConfigError, add_arguments, load_config
from sidecar._logging import configure_logging
from sidecar._server import VERSION, Sidecar

__all__ = ["main"]

_DESCRIPTION = "ARE, the Agent Runtime Environment: a gRPC sidecar that orchestrates AI agents."
_SERVE_EPILOG = (
    "Precedence: command-line flag > ARE_* environment variable > TOML file (--config) > default. "
    "Stop with SIGTERM or SIGINT for a graceful shutdown."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="are", description=_DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"are {VERSION}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the sidecar",
        description="Run the ARE sidecar until SIGTERM or SIGINT.",
        epilog=_SERVE_EPILOG,
    )
    add_arguments(serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``are`` command line and returns its exit status."""
    parser = _parser()
    args = vars(parser.parse_args(argv))  # exits 2, naming the option, on a bad flag
    command = args.pop("command")
    if command != "serve":
        parser.error(f"unknown command {command!r}")
    return _serve(args)


def _serve(flags: dict[str, str]) -> int:
    try:
        config = load_config(flags)
    except ConfigError as error:
        sys.stderr.write(f"are serve: error: {error}\n")
        return 2
    configure_logging(config.log_format, config.log_level)
    try:
        return uvloop.run(Sidecar(config).run())
    except DataDirLockedError as error:
        logging.getLogger("are.sidecar").error(str(error))
        return 1
    except OSError as error:
        logging.getLogger("are.sidecar").error(f"cannot start: {error}")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
