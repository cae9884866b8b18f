#!/usr/bin/env bash
# Checks the Java SDK: generates the are.v1 stubs from ../../proto, compiles
# (javac lint warnings shown), and runs the JUnit tests against real sidecars
# started from the repository's .venv (dev.are.sdk.testing.Sidecar), with
# Maven Central as the only repository. Runs from any cwd; arguments go to
# Maven (-Dare.repo=PATH tests the sidecar of another checkout).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
if [[ -z "${ARE_PYTHON:-}" && ! -x ../../.venv/bin/python ]]; then
    echo "sdks/java/test.sh: no ../../.venv/bin/python (run 'make venv' or set ARE_PYTHON)" >&2
    exit 1
fi
for tool in java mvn; do
    if ! command -v "$tool" >/dev/null; then
        echo "sdks/java/test.sh: $tool is needed (JDK 17 or later, Maven 3.8 or later)" >&2
        exit 1
    fi
done
# -ntp: no download progress; the Surefire summary closes the output.
mvn -B -ntp verify "$@"
