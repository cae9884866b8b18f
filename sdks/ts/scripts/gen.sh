#!/usr/bin/env bash
# Regenerates src/gen from proto/are/v1 (the contract, at the repository root)
# and sdks/ts/proto (google.rpc status details, grpc.health.v1) with buf and
# the ts-proto plugin pinned in package.json, then rewrites ts-proto's
# longToNumber so that an int64 beyond 2^53 decodes to the nearest double
# rather than failing the call (scripts/patch-gen.mjs).
#   scripts/gen.sh          write src/gen
#   scripts/gen.sh --check  regenerate into a temporary folder, fail on a diff
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
repo="$(cd "$here/../.." && pwd)"
buf="${BUF:-$repo/.venv/bin/buf}"
if [[ ! -x "$buf" ]]; then buf="$(command -v buf || true)"; fi
if [[ -z "$buf" ]]; then echo "gen.sh: buf not found (make venv, or set BUF)" >&2; exit 2; fi
if [[ ! -x "$here/node_modules/.bin/protoc-gen-ts_proto" ]]; then
  echo "gen.sh: run npm ci in sdks/ts first" >&2; exit 2
fi
out="$here/src/gen"
if [[ "${1:-}" == "--check" ]]; then out="$(mktemp -d)"; trap 'rm -rf "$out"' EXIT; fi
template="$(sed "s#out: src/gen#out: $out#; s#local: node_modules#local: $here/node_modules#" "$here/buf.gen.yaml")"
if [[ "${1:-}" != "--check" ]]; then rm -rf "$out"; fi
(cd "$repo" && "$buf" generate proto --template "$template")
(cd "$here" && "$buf" generate proto --template "$template")
node "$here/scripts/patch-gen.mjs" "$out"
if [[ "${1:-}" == "--check" ]]; then
  if diff -r "$out" "$here/src/gen" >/dev/null; then
    echo "generated TypeScript code is up to date"
  else
    diff -r "$out" "$here/src/gen" | head -20 >&2
    echo "generated TypeScript code is stale; run \`npm run gen\` in sdks/ts and commit" >&2
    exit 1
  fi
fi
