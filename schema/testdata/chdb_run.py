#!/usr/bin/env python3
"""Run usagepipe's rendered ClickHouse DDL, fact rows and queries on chDB.

chDB (PyPI `chdb`) embeds a current ClickHouse engine, so this checks that
the schema written for ClickHouse 18.16 also works on current releases.
schema/chdb_test.go writes the input and compares the output with what the
real 18.16 server returned.

    python3 chdb_run.py IN.json OUT.json

IN.json:  {"statements": [sql, ...],
           "inserts": [{"table": "db.t", "columns": [...], "rows": [[...], ...]}],
           "after": [sql, ...],  # run after the inserts
           "queries": {"name": sql, ...}}
OUT.json: {"version": "26.x", "results": {"name": {"meta": [...], "data": [[...], ...]}}}

Exit status 3 when chdb is not installed (pip install chdb).
"""

import json
import sys
import tempfile


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        from chdb import session
    except ImportError as e:
        print(f"chdb is not installed ({e}); install it with: pip install chdb", file=sys.stderr)
        return 3
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    with tempfile.TemporaryDirectory(prefix="usagepipe-chdb-") as path:
        sess = session.Session(path)
        try:
            out = {"version": str(sess.query("SELECT version()", "TSVRaw")).strip(), "results": {}}
            for sql in spec["statements"]:
                run(sess, sql)
            for ins in spec["inserts"]:
                cols = ins["columns"]
                body = "\n".join(json.dumps(dict(zip(cols, row)), ensure_ascii=False) for row in ins["rows"])
                run(sess, f"INSERT INTO {ins['table']} ({', '.join(cols)}) FORMAT JSONEachRow\n{body}")
            for sql in spec.get("after", []):
                run(sess, sql)
            for name, sql in spec["queries"].items():
                res = json.loads(str(run(sess, sql, "JSONCompact")))
                out["results"][name] = {"meta": res["meta"], "data": res["data"]}
        finally:
            sess.close()
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)
    return 0


def run(sess, sql, fmt="CSV"):
    try:
        return sess.query(sql, fmt)
    except Exception as e:  # chdb raises its own error type
        raise SystemExit(f"chdb: {e}\nstatement:\n{sql}") from None


if __name__ == "__main__":
    sys.exit(main())
