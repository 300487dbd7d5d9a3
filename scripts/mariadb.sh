#!/usr/bin/env bash
# Make sure a MariaDB server answers on 127.0.0.1:3306 (root, no password) for the MySQL
# backend's tests. Reuses a server that already answers; otherwise installs MariaDB from
# Debian's packages (when missing) and starts one in the background under target/mariadb.
set -euo pipefail

PORT="${NEO_MYSQL_PORT:-3306}"
DIR="${NEO_MYSQL_DIR:-$(pwd)/target/mariadb}"

answers() {
    command -v mariadb-admin >/dev/null 2>&1 &&
        mariadb-admin --protocol=tcp -h127.0.0.1 -P"$PORT" -uroot ping >/dev/null 2>&1
}

if answers; then
    echo "mariadb: a server answers on 127.0.0.1:$PORT"
    exit 0
fi

if ! command -v mariadbd >/dev/null 2>&1; then
    echo "mariadb: installing mariadb-server from Debian's packages"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends mariadb-server mariadb-client >/dev/null
fi

mkdir -p "$DIR"
if [ ! -d "$DIR/data/mysql" ]; then
    echo "mariadb: initialising a data directory in $DIR/data"
    mariadb-install-db --no-defaults --user="$(id -un)" --datadir="$DIR/data" --skip-test-db >"$DIR/install.log" 2>&1
fi
echo "mariadb: starting a server on 127.0.0.1:$PORT"
setsid mariadbd --no-defaults --user="$(id -un)" --datadir="$DIR/data" \
    --socket="$DIR/mysqld.sock" --pid-file="$DIR/mysqld.pid" --port="$PORT" \
    --bind-address=127.0.0.1 --skip-name-resolve --max-allowed-packet=128M \
    >"$DIR/mysqld.log" 2>&1 < /dev/null &
for _ in $(seq 1 60); do
    if mariadb-admin --socket="$DIR/mysqld.sock" -uroot ping >/dev/null 2>&1; then
        # Root over TCP without a password, as the tests expect.
        mariadb --socket="$DIR/mysqld.sock" -uroot -e \
            "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD(''); CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY ''; GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; FLUSH PRIVILEGES;" \
            >/dev/null 2>&1 || true
        if answers; then
            echo "mariadb: ready"
            exit 0
        fi
    fi
    sleep 0.5
done
echo "mariadb: the server did not start; see $DIR/mysqld.log" >&2
exit 1
