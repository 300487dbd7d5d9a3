#!/usr/bin/env bash
# Every check and test suite of the project, on a fresh machine: sets up MariaDB for the
# MySQL backend's tests, then formatting, lints, and all tests (unit and property tests,
# simulation sweeps, real processes), then the Python package (python/, neo.client: its
# wheel in a virtualenv under target/, ZODB's conformance tests on real clusters). The
# build is optimised (profile `ci`, with debug assertions and overflow checks) so the
# sweeps fit in CI's time.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

scripts/mariadb.sh

echo "== cargo fmt --check"
cargo fmt --check

echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

echo "== cargo test --profile ci"
cargo test --profile ci "$@"

echo "== the Python package (neo.client) and its tests"
scripts/python-test.sh

echo "all checks passed in $(( $(date +%s) - started ))s"
