#!/usr/bin/env bash
# The Python package (python/: neo.client) on a fresh machine: a virtualenv in target/py
# with ZODB, maturin and the test tools from the package index (RelStorage for its
# zodbconvert, which the round-trip test runs; once, again only when the list below
# changes), the abi3 wheel (built into
# target/python, a target folder of its own), installed into the virtualenv, then the
# Python tests against real local clusters. Quick when already set up.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=$root/target/py
requirements="ZODB maturin pytest zope.testing zodburi RelStorage"

if [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$requirements" ]; then
    echo "== virtualenv $venv: $requirements"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    # shellcheck disable=SC2086
    "$venv/bin/pip" install -q $requirements
    echo "$requirements" > "$venv/.requirements"
fi

# The node programs: those `cargo test --profile ci` built (scripts/test.sh runs it first,
# with the mutants feature its tests enable); built the same way only when missing, so
# that the two never rebuild the core crate for each other.
if ! [ -x target/ci/neomaster ] || ! [ -x target/ci/neostorage ] || ! [ -x target/ci/neoadmin ]; then
    echo "== node programs for the Python tests (cargo build --profile ci)"
    cargo build --profile ci --features mutants --bin neomaster --bin neostorage --bin neoadmin
fi

export CARGO_TARGET_DIR=$root/target/python
echo "== python/: cargo fmt --check, clippy"
cargo fmt --manifest-path python/Cargo.toml --check
PYO3_PYTHON="$venv/bin/python" cargo clippy --manifest-path python/Cargo.toml --release -- -D warnings

echo "== python/: the wheel (maturin), installed into $venv"
rm -rf "$CARGO_TARGET_DIR/wheels"
(cd python && PATH="$venv/bin:$PATH" maturin build --release --out "$CARGO_TARGET_DIR/wheels")
"$venv/bin/pip" install -q --force-reinstall --no-deps "$CARGO_TARGET_DIR"/wheels/*.whl

echo "== python/tests (pytest)"
cd python
NEO_BIN_DIR="$root/target/ci" "$venv/bin/pytest" -p no:cacheprovider -q tests
