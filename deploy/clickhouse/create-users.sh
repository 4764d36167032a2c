#!/usr/bin/env bash
# Create (or update) the usagepipe ClickHouse users on a CURRENT ClickHouse.
# Applies access.sql, then creates:
#   usagepipe      roles usagepipe_writer + usagepipe_migrator, profile usagepipe_profile
#   usage_analyst  role usage_reader, profile usage_analyst_profile
# Passwords are read from files and sent as SHA-256 hashes: they never appear
# in argv, in this script's output, or in ClickHouse's query log.
#
#   USAGEPIPE_PASSWORD_FILE=/run/secrets/usagepipe \
#   ANALYST_PASSWORD_FILE=/run/secrets/analyst \
#   CLICKHOUSE_CLIENT="clickhouse client --host ch.example --user admin" \
#     deploy/clickhouse/create-users.sh
#
# Give the admin client its credentials without argv: CLICKHOUSE_USER and
# CLICKHOUSE_PASSWORD in the environment, or ~/.clickhouse-client/config.xml.
# Compose runs this from initdb/10-usagepipe-users.sh.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
client=${CLICKHOUSE_CLIENT:-clickhouse client}
db=${USAGEPIPE_CLICKHOUSE_DATABASE:-usage}

: "${USAGEPIPE_PASSWORD_FILE:?file with the usagepipe user password}"
: "${ANALYST_PASSWORD_FILE:?file with the usage_analyst user password}"

hash() { # sha256 hex of a file's content without a trailing newline
	local p
	p=$(<"$1")
	printf '%s' "$p" | sha256sum | cut -d' ' -f1
}

if [[ $db != usage ]]; then
	# access.sql names the database; rewrite it for a non-default one.
	sql=$(sed "s/\busage\.\([a-z_*]\)/${db}.\1/g" "$here/access.sql")
else
	sql=$(<"$here/access.sql")
fi

$client --multiquery <<SQL
CREATE DATABASE IF NOT EXISTS ${db};
${sql}
CREATE USER IF NOT EXISTS usagepipe;
ALTER USER usagepipe IDENTIFIED WITH sha256_hash BY '$(hash "$USAGEPIPE_PASSWORD_FILE")'
    SETTINGS PROFILE 'usagepipe_profile';
GRANT usagepipe_writer, usagepipe_migrator TO usagepipe;
ALTER USER usagepipe DEFAULT ROLE usagepipe_writer, usagepipe_migrator;
CREATE USER IF NOT EXISTS usage_analyst;
ALTER USER usage_analyst IDENTIFIED WITH sha256_hash BY '$(hash "$ANALYST_PASSWORD_FILE")'
    SETTINGS PROFILE 'usage_analyst_profile';
GRANT usage_reader TO usage_analyst;
ALTER USER usage_analyst DEFAULT ROLE usage_reader;
SQL
echo "create-users: usagepipe and usage_analyst are set up in database ${db}"
