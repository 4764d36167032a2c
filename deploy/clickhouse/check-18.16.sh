#!/usr/bin/env bash
# shellcheck disable=SC2317 # functions run indirectly (check, trap, "install_$t")
# Loads users-18.16.xml into a throw-away ClickHouse 18.16 server (Debian's
# clickhouse-server, loopback only, temp dir) and checks what it promises:
# usagepipe can run DDL and writes in `usage` but not elsewhere; usage_analyst
# can read the views and can neither write, nor run DDL, nor change settings.
# Used by deploy/validate.sh; needs clickhouse-server and clickhouse-client.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=$(mktemp -d)
pid=
cleanup() {
	if [[ -n $pid ]]; then
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tcp=$(free_port)
http=$(free_port)
mkdir -p "$dir/users.d"

cat >"$dir/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>$dir/server.log</log><errorlog>$dir/server.err.log</errorlog><console>0</console></logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>$tcp</tcp_port>
    <http_port>$http</http_port>
    <path>$dir/data/</path>
    <tmp_path>$dir/tmp/</tmp_path>
    <user_files_path>$dir/user_files/</user_files_path>
    <format_schema_path>$dir/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>268435456</mark_cache_size>
    <mlock_executable>false</mlock_executable>
</yandex>
XML
cat >"$dir/users.xml" <<'XML'
<?xml version="1.0"?>
<yandex>
    <profiles><default></default></profiles>
    <users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
XML

pipe_pw=pipe-test-password
analyst_pw=analyst-test-password
sha() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
python3 - "$here/users-18.16.xml" "$dir/users.d/usagepipe.xml" "$(sha "$pipe_pw")" "$(sha "$analyst_pw")" <<'PY'
import sys
src, dst, pipe, analyst = sys.argv[1:]
s = open(src).read()
ph = "<password_sha256_hex>REPLACE_WITH_SHA256_HEX</password_sha256_hex>"
assert s.count(ph) == 2, "expected two password placeholders"
s = s.replace(ph, ph.replace("REPLACE_WITH_SHA256_HEX", pipe), 1)
s = s.replace(ph, ph.replace("REPLACE_WITH_SHA256_HEX", analyst), 1)
open(dst, "w").write(s)
PY

clickhouse-server --config-file="$dir/config.xml" >"$dir/stdout.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
	if clickhouse-client --port "$tcp" -q 'SELECT 1' >/dev/null 2>&1; then break; fi
	if ! kill -0 "$pid" 2>/dev/null; then
		echo "clickhouse-server exited:"; cat "$dir/stdout.log" "$dir/server.err.log" 2>/dev/null
		exit 1
	fi
	sleep 0.2
done

as() { # as USER PASSWORD [client args...]
	local u=$1 p=$2
	shift 2
	clickhouse-client --port "$tcp" --user "$u" --password "$p" "$@" 2>&1
}
failures=0
ok() { # ok DESCRIPTION COMMAND... : the command must succeed
	local d=$1 out
	shift
	if out=$("$@"); then echo "ok    $d"; else echo "FAIL  $d (should succeed): $out"; failures=$((failures + 1)); fi
}
denied() { # denied DESCRIPTION COMMAND... : the command must fail
	local d=$1 out
	shift
	if out=$("$@"); then echo "FAIL  $d (should be refused)"; failures=$((failures + 1)); else echo "ok    $d (refused: $(head -c 140 <<<"$out" | tr '\n' ' '))"; fi
}

P=(usagepipe "$pipe_pw")
A=(usage_analyst "$analyst_pw")
ok "usagepipe creates database usage" as "${P[@]}" -q 'CREATE DATABASE IF NOT EXISTS usage'
ok "usagepipe creates a fact table" as "${P[@]}" --database usage -q 'CREATE TABLE fact_test (account_id String, n UInt64) ENGINE = MergeTree ORDER BY account_id'
ok "usagepipe inserts" as "${P[@]}" --database usage -q "INSERT INTO fact_test (account_id, n) VALUES ('a', 1)"
ok "usagepipe creates a rollup view" as "${P[@]}" --database usage -q 'CREATE VIEW account_quarter_rollups AS SELECT account_id, sum(n) AS n FROM fact_test GROUP BY account_id'
ok "usagepipe alters a table" as "${P[@]}" --database usage -q 'ALTER TABLE fact_test ADD COLUMN extra UInt8 DEFAULT 0'
denied "usagepipe touches another database" as "${P[@]}" --database usage -q 'CREATE TABLE default.t (x UInt8) ENGINE = Memory'
denied "wrong password" as usagepipe wrong --database usage -q 'SELECT 1'
ok "analyst reads the view" as "${A[@]}" --database usage -q 'SELECT account_id, n FROM account_quarter_rollups'
denied "analyst inserts" as "${A[@]}" --database usage -q "INSERT INTO fact_test (account_id, n) VALUES ('b', 2)"
denied "analyst creates a table" as "${A[@]}" --database usage -q 'CREATE TABLE t2 (x UInt8) ENGINE = Memory'
denied "analyst drops the view" as "${A[@]}" --database usage -q 'DROP TABLE account_quarter_rollups'
denied "analyst changes a setting" as "${A[@]}" --database usage -q 'SET max_memory_usage = 1'
denied "analyst reads another database" as "${A[@]}" --database usage -q 'SELECT * FROM default.t'
ok "analyst connects without naming a database" as "${A[@]}" -q "SELECT count() FROM usage.account_quarter_rollups"
exit $((failures > 0))
