#!/usr/bin/env bash
# Compose only: run by the clickhouse/clickhouse-server entrypoint on first
# start (empty data volume). clickhouse-client takes the admin credentials
# from the CLICKHOUSE_USER/CLICKHOUSE_PASSWORD environment of the container
# (no password in argv). Creates the least-privilege users with the passwords
# of the compose secrets; see deploy/clickhouse/create-users.sh.
set -euo pipefail
USAGEPIPE_PASSWORD_FILE=/run/secrets/clickhouse_usagepipe_password \
ANALYST_PASSWORD_FILE=/run/secrets/clickhouse_analyst_password \
CLICKHOUSE_CLIENT="clickhouse-client --host 127.0.0.1" \
	/usagepipe/clickhouse/create-users.sh
