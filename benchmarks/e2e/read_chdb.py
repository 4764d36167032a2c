#!/usr/bin/env python3
"""TestRead's chDB side: run setup statements, then time each query.

    python3 read_chdb.py IN.json OUT.json

IN.json:  {"setup": [sql, ...], "queries": {"name": sql, ...}}
OUT.json: {"version": "26.x", "setup_s": float,
           "results": {"name": {"s": best of 3 seconds,
                                "fits_256mib": 1 if the query also runs under max_memory_usage = 256 MiB}}}

chDB has no system.query_log, so memory is checked against the limit
instead of measured.

chDB (PyPI chdb) embeds a current ClickHouse engine in-process, so times
are in-process (no client start, no network); compare ratios, not times
with the 18.16 side.
"""

import json
import sys
import tempfile
import time


def main() -> int:
    from chdb import session
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    with tempfile.TemporaryDirectory(prefix="usagepipe-read-") as path:
        sess = session.Session(path)
        try:
            out = {"version": str(sess.query("SELECT version()", "TSVRaw")).strip(), "results": {}}
            t0 = time.perf_counter()
            for sql in spec["setup"]:
                run(sess, sql)
            out["setup_s"] = time.perf_counter() - t0
            for name, sql in spec["queries"].items():
                best = None
                for _ in range(3):
                    t = time.perf_counter()
                    run(sess, sql + " FORMAT Null")
                    s = time.perf_counter() - t
                    if best is None or s < best["s"]:
                        best = {"s": s}
                try:
                    sess.query(sql + " SETTINGS max_memory_usage = 268435456 FORMAT Null", "CSV")
                    best["fits_256mib"] = 1
                except Exception:  # over the limit
                    best["fits_256mib"] = 0
                out["results"][name] = best
        finally:
            sess.close()
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(out, f)
    return 0


def run(sess, sql, fmt="CSV"):
    try:
        return sess.query(sql, fmt)
    except Exception as e:  # chdb raises its own error type
        raise SystemExit(f"chdb: {e}\nstatement:\n{sql[:2000]}") from None


if __name__ == "__main__":
    sys.exit(main())
