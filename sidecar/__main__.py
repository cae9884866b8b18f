"""``python -m sidecar [serve] [OPTIONS]`` runs the sidecar, like ``are serve``."""

import sys

from sidecar.cli import main

argv = sys.argv[1:]
if not argv or argv[0] != "serve":
    argv = ["serve", *argv]
sys.exit(main(argv))
