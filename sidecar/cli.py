"""The ``are`` command line: ``are serve`` runs the sidecar; the other commands talk to one.

``are serve`` keeps its own option parser (derived from :data:`OPTIONS`, so
``--help``, the environment and the TOML file cannot drift apart). Exit
statuses of ``are serve``: 0 after a clean shutdown, 2 for an unknown or
invalid option (the message names it; this includes a config or token file
that is not UTF-8 text and TLS files that are not a certificate and its key),
1 when the sidecar cannot start (for example another sidecar holds the data
folder, the address is taken, or the data folder's LMDB environment cannot be
opened). An empty ``ARE_*`` variable counts as unset. Flags are taken only as
spelled: an abbreviation (``--data`` for ``--data-dir``) is an unknown flag,
and the values of unknown arguments are not echoed (one may be a secret).

The client commands (``are submit``, ``status``, ``result``, ``trace``, ``events``,
``workflows``, ``cancel``, ``approve``, ``reject``, ``approvals``,
``state``, ``pools``, ``cache stats``, ``agents``, ``route``)
live in :mod:`sidecar._cli_client`; they exit 0 on success, 1 when the
sidecar answers with an error (printed with its reason) or cannot be reached,
2 for a usage error (a bad option, target or spec file), 130 on Ctrl-C and
128 + the signal's number on SIGTERM or SIGHUP.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import click
import uvloop

from are_core.storage import DataDirLockedError, StorageOpenError
from sidecar._cli_client import register_client_commands
from sidecar._config import ConfigError, add_arguments, load_config
from sidecar._logging import configure_logging
from sidecar._server import VERSION, Sidecar, start_failure

__all__ = ["main"]

_DESCRIPTION = "ARE, the Agent Runtime Environment: a gRPC sidecar that orchestrates AI agents."
_SERVE_EPILOG = (
    "Precedence: command-line flag > ARE_* environment variable > TOML file (--config) > default; "
    "an empty ARE_* variable counts as unset. Stop with SIGTERM or SIGINT for a graceful shutdown."
)


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="are serve",
        description="Run the ARE sidecar until SIGTERM or SIGINT.",
        epilog=_SERVE_EPILOG,
        # No prefix matching: `--token SECRET` (the client commands' flag) would be taken as
        # --token-file and its value echoed in the error, `--data` as --data-dir.
        allow_abbrev=False,
    )
    add_arguments(parser)
    return parser


def _parse_serve_args(argv: list[str]) -> dict[str, str]:
    """The flags of ``are serve``; exits 2, naming the flag, on a bad one, without echoing values."""
    parser = _serve_parser()
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        # argparse would list the unknown arguments whole, values included, and one may be a
        # secret (`--token SECRET`): name the flags only.
        flags = [arg.partition("=")[0] for arg in unknown if arg.startswith("-")]
        hidden = sum(not arg.startswith("-") or "=" in arg for arg in unknown)
        named = " ".join(flags) or "none"
        parser.error(
            f"unrecognized arguments: {named}" + (f" ({hidden} value(s) not shown)" if hidden else "")
        )
    return vars(namespace)


@click.group(help=_DESCRIPTION, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, prog_name="are", message="%(prog)s %(version)s")
def _are() -> None:
    """The ``are`` command group."""


@_are.command(
    "serve",
    help="Run the sidecar (see `are serve --help` for its options).",
    add_help_option=False,
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "allow_interspersed_args": False,
    },
)
@click.pass_context
def _serve_command(ctx: click.Context) -> None:
    ctx.exit(_serve(_parse_serve_args(ctx.args)))


register_client_commands(_are)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``are`` command line and returns its exit status."""
    try:
        _are.main(args=list(argv) if argv is not None else None, prog_name="are", standalone_mode=True)
    except SystemExit as exit_:
        code = exit_.code
        if code is None:
            return 0
        return code if isinstance(code, int) else 1


def _pin(cpus: tuple[int, ...]) -> None:
    """Pins every thread of this process to ``cpus``; threads started later inherit it.

    Some threads exist before the server does (a BLAS library's, started at
    import), so each is pinned, not only this one.
    """
    for task in Path("/proc/self/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def _serve(flags: dict[str, str]) -> int:
    try:
        config = load_config(flags)
    except ConfigError as error:
        sys.stderr.write(f"are serve: error: {error}\n")
        return 2
    configure_logging(config.log_format, config.log_level)
    if config.cpu_affinity:
        _pin(config.cpu_affinity)
    try:
        return uvloop.run(Sidecar(config).run())
    except (DataDirLockedError, StorageOpenError, OSError) as error:  # before anything was opened
        logging.getLogger("are.sidecar").error(start_failure(error))
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
