#!/usr/bin/env bash
# Installs what usagepipe's build, demo and tests need on a fresh Debian 12
# machine. Idempotent: quick when everything is present.
set -euo pipefail
need_apt=()
command -v clickhouse-server >/dev/null 2>&1 || need_apt+=(clickhouse-server)
command -v clickhouse-client >/dev/null 2>&1 || need_apt+=(clickhouse-client)
command -v java >/dev/null 2>&1 || need_apt+=(default-jre-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
# ZooKeeper for the test cluster (schema/chcluster); the package starts no service.
test -f /usr/share/java/zookeeper.jar || need_apt+=(zookeeper)
# pip for chDB (Debian's python3 comes without it).
python3 -c 'import chdb' >/dev/null 2>&1 || python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "deps: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
  # Debian's package tries to start a system service; the project runs private servers.
  $SUDO service clickhouse-server stop >/dev/null 2>&1 || true
fi
if ! python3 -c 'import chdb' >/dev/null 2>&1; then
  echo "deps: pip install chdb (a current ClickHouse engine, for the DDL compatibility test)"
  # Debian's own python3 refuses installs outside a venv (PEP 668): then
  # into the user's site-packages, where python3 finds it.
  python3 -m pip install -q 'chdb==4.4.0' 2>/dev/null ||
    python3 -m pip install -q --user --break-system-packages 'chdb==4.4.0'
fi
go mod download
if [ -x ingest/kafkatest/fetch-kafka.sh ] || [ -f ingest/kafkatest/fetch-kafka.sh ]; then
  bash ingest/kafkatest/fetch-kafka.sh
fi
