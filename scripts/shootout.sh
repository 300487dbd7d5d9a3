#!/usr/bin/env bash
# zodbshootout through <NEOStorage> beside FileStorage and ZEO, in one command (a benchmark,
# not a test): a virtualenv in target/shootout with ZODB, ZEO, zodbshootout, pyperf 2.3.0
# and six from the package index (once), the release node programs and the neo.client
# wheel, then scripts/shootout.py, which starts a local cluster (1 master, 2 SQLite
# storages, replicas 1) and a ZEO server and prints each operation's ratio to FileStorage.
# Arguments go to shootout.py (--concurrency 1 2, --objects 1000, --rigorous, --keep).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=$root/target/shootout
requirements="ZODB ZEO zodbshootout pyperf==2.3.0 six maturin"

if [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$requirements" ]; then
    echo "== virtualenv $venv: $requirements"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    # shellcheck disable=SC2086
    "$venv/bin/pip" install -q $requirements
    echo "$requirements" > "$venv/.requirements"
fi

echo "== node programs (cargo build --release)"
cargo build --release --bin neosimple --bin neomaster --bin neostorage --bin neoadmin

echo "== the neo.client wheel (maturin), installed into $venv"
export CARGO_TARGET_DIR=$root/target/python
rm -rf "$CARGO_TARGET_DIR/shootout-wheels"
(cd python && PATH="$venv/bin:$PATH" maturin build --release --out "$CARGO_TARGET_DIR/shootout-wheels")
"$venv/bin/pip" install -q --force-reinstall --no-deps "$CARGO_TARGET_DIR"/shootout-wheels/*.whl

exec "$venv/bin/python" scripts/shootout.py --bindir "$root/target/release" "$@"
