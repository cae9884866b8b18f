"""Entry point: ``python -m benchmarks [SUITE ...] [--json PATH] ...``."""

from benchmarks._harness import main

if __name__ == "__main__":
    raise SystemExit(main())
