#!/usr/bin/env bash
# Installs, builds and tests the TypeScript SDK against a real sidecar.
#   - npm ci (exact versions from package-lock.json)
#   - the generated code in src/gen is checked fresh against proto/ (buf from
#     the repository's .venv and the pinned ts-proto)
#   - tsc builds dist/ (the package) and build/test/ (the tests)
#   - node --test runs the tests; each file starts its own sidecar from
#     <repo>/.venv/bin/python -m sidecar on 127.0.0.1 with a temporary data folder
# Runs from any directory; expects the repository's .venv to exist (make venv).
# Exits non-zero on any failure.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$here"

if [[ ! -x "$repo/.venv/bin/python" ]]; then
  echo "sdks/ts/test.sh: $repo/.venv/bin/python is missing; create the venv first (make venv)" >&2
  exit 2
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "sdks/ts/test.sh: node and npm are needed (Node.js 20.3 or later)" >&2
  exit 2
fi

npm ci --no-audit --no-fund --loglevel=error
bash scripts/gen.sh --check
rm -rf dist build
npx --no-install tsc -p tsconfig.json
npx --no-install tsc -p tsconfig.test.json
node --test --test-reporter=spec --test-timeout=120000 build/test/*.test.js
