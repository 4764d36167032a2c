#!/usr/bin/env python3
"""Parses ClickHouse SQL with an embedded current ClickHouse (chdb-core).

Usage:
  clickhouse_sql_check.py FILE.sql...        check files
  clickhouse_sql_check.py --stdin [ARGS...]  check SQL on stdin (extra ARGS,
      e.g. --multiquery, are ignored: stands in for `clickhouse client` when
      create-users.sh is run with CLICKHOUSE_CLIENT pointing here)

Every statement must parse (formatQuery), and every setting named in a
SETTINGS clause must exist in system.settings of that ClickHouse version.
No server, no network: this checks syntax and names, not privileges.
"""
import re
import sys

import chdb


def statements(sql):
    body = "\n".join(l for l in sql.splitlines() if not l.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def q(sql):
    return chdb.query(sql, "TSVRaw").bytes().decode().strip()


def quote(s):
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def main():
    if sys.argv[1:2] == ["--stdin"]:
        sources = [("stdin", sys.stdin.read())]
    else:
        sources = [(p, open(p).read()) for p in sys.argv[1:]]
    version = q("SELECT version()")
    known = set(q("SELECT name FROM system.settings").split("\n"))
    errors, n = [], 0
    for src, sql in sources:
        for st in statements(sql):
            n += 1
            head = st.splitlines()[0][:80]
            try:
                q(f"SELECT formatQuery({quote(st)})")
            except Exception as e:  # chdb raises a plain exception with the server message
                errors.append(f"{src}: {head}: {str(e).splitlines()[0][:300]}")
                continue
            m = re.search(r"\bSETTINGS\b(.*)$", st, re.S | re.I)
            if m and not re.match(r"\s*PROFILE\b", m.group(1), re.I):
                for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*=", m.group(1)):
                    if name not in known:
                        errors.append(f"{src}: {head}: unknown setting {name!r} in ClickHouse {version}")
    for e in errors:
        print("ERROR", e)
    print(f"{n} statements parsed by ClickHouse {version} (chdb); {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
