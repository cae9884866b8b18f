#!/usr/bin/env bash
# `buf breaking` against the last landed contract: on a branch, the merge base
# with main; on main, HEAD when proto/ has uncommitted changes, else the commit
# before HEAD. The baseline is exported with `git archive`, so buf needs no
# network and no clone.
set -euo pipefail
BUF=${BUF:-buf}
cd "$(git rev-parse --show-toplevel)"
branch=$(git rev-parse --abbrev-ref HEAD)
if [ "$branch" != main ] && git rev-parse -q --verify main >/dev/null; then
  against=$(git merge-base HEAD main)
elif [ -n "$(git status --porcelain -- proto buf.yaml)" ]; then
  against=HEAD
else
  against=HEAD~1
fi
if ! git rev-parse -q --verify "$against^{commit}" >/dev/null \
   || ! git ls-tree -r --name-only "$against" -- proto | grep -q '\.proto$'; then
  echo "buf breaking: no earlier contract at $against; nothing to compare"
  exit 0
fi
baseline=$(mktemp -d)
trap 'rm -rf "$baseline"' EXIT
git archive "$against" buf.yaml proto | tar -x -C "$baseline"
"$BUF" breaking --against "$baseline"
echo "buf breaking: compatible with $(git rev-parse --short "$against")"
