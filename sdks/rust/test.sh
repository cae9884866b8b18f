#!/usr/bin/env bash
# Checks the Rust SDK: formatting, clippy (warnings are errors), and the tests
# against a real sidecar started from the repository's .venv. Runs from any cwd.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
if [[ -z "${ARE_PYTHON:-}" && ! -x ../../.venv/bin/python ]]; then
    echo "sdks/rust/test.sh: no ../../.venv/bin/python (run 'make run' or set ARE_PYTHON)" >&2
    exit 1
fi
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
