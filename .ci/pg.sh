#!/usr/bin/env bash
# Throwaway PostgreSQL for the store tests: its own data dir, its own port on 127.0.0.1.
#   .ci/pg.sh start   -> prints the URL to export as XASTRUCT_TEST_PG_URL
#   .ci/pg.sh stop
set -euo pipefail
DIR=${XASTRUCT_PG_DIR:-/tmp/xastruct-pgtest}
PORT=${XASTRUCT_PG_PORT:-55432}
bin_dir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$d" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null 2>&1 || true
      d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    fi
  fi
  echo "$d"
}
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case "${1:-}" in
  start)
    B=$(bin_dir)
    if [ -z "$B" ]; then echo "postgresql not available" >&2; exit 3; fi
    "$0" stop >/dev/null 2>&1 || true
    rm -rf "$DIR"; mkdir -p "$DIR"
    [ "$(id -u)" = 0 ] && chown postgres "$DIR"
    as_pg "$B/initdb" -D "$DIR/data" -U xastruct --auth=trust >/dev/null
    as_pg "$B/pg_ctl" -D "$DIR/data" -l "$DIR/log" -w \
      -o "-c listen_addresses=127.0.0.1 -c port=$PORT -c unix_socket_directories=$DIR -c fsync=off" start >/dev/null
    as_pg "$B/createdb" -h 127.0.0.1 -p "$PORT" -U xastruct xastruct_test
    echo "postgresql+psycopg://xastruct@127.0.0.1:$PORT/xastruct_test"
    ;;
  stop)
    B=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$B" ] && [ -d "$DIR/data" ] && as_pg "$B/pg_ctl" -D "$DIR/data" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$DIR"
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
