#!/usr/bin/env bash
# Make sure the PostgreSQL server binaries and the q3c extension are installed (Debian).
# The private test/demo cluster (py/specprod_db/devdb/pgcluster.py) is started from these
# system binaries; nothing here starts or configures a server.
set -euo pipefail

PG_MAJOR="${PG_MAJOR:-15}"
initdb="/usr/lib/postgresql/${PG_MAJOR}/bin/initdb"
q3c="/usr/share/postgresql/${PG_MAJOR}/extension/q3c.control"
packages="postgresql-${PG_MAJOR} postgresql-${PG_MAJOR}-q3c"

if [[ -x "$initdb" && -f "$q3c" ]]; then
    exit 0
fi

echo "ensure-pg: missing ${initdb} or ${q3c}; need Debian packages: ${packages}" >&2
if [[ "$(id -u)" != 0 ]]; then
    echo "ensure-pg: not root, so not installing. Run as root:" >&2
    echo "    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y ${packages}" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
timeout 600 apt-get update -q
# shellcheck disable=SC2086
timeout 1200 apt-get install -y -q --no-install-recommends $packages </dev/null

if [[ ! -x "$initdb" || ! -f "$q3c" ]]; then
    echo "ensure-pg: installed ${packages} but ${initdb} or ${q3c} is still missing" >&2
    exit 1
fi
