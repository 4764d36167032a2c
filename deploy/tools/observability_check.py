#!/usr/bin/env python3
"""Consistency checks between alerts, their tests, dashboards and the docs.

Usage: observability_check.py DEPLOY_DIR DOCS_FILE PROMQL_RULES_OUT

- alerts.yml: every alert has severity, summary, description and a
  runbook_url whose #anchor exists in DOCS_FILE.
- alerts_test.yml: every alert has at least one case where it fires and one
  where it is expected not to.
- dashboards: valid structure (unique ids, data source variable, refIds,
  panels inside the 24-column grid and not overlapping).
- Every usagepipe_* metric used by the alerts or dashboards is documented in
  DOCS_FILE.
- Writes every dashboard query as a recording rule to PROMQL_RULES_OUT
  (Grafana variables replaced), so that `promtool check rules` parses them.
"""
import glob
import json
import os
import re
import sys

import yaml

errors = []


def err(msg):
    errors.append(msg)


def github_anchors(md):
    anchors = set(re.findall(r'<a\s+(?:id|name)="([^"]+)"', md))
    in_code = False
    for line in md.splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        m = None if in_code else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            text = re.sub(r"`", "", m.group(1)).lower()
            text = re.sub(r"[^\w\- ]", "", text)
            anchors.add(text.replace(" ", "-"))
    return anchors


METRIC_RE = re.compile(r"\b(usagepipe_[a-z0-9_]+)")


def base_metric(n):
    for suffix in ("_bucket", "_sum", "_count"):
        if n.endswith(suffix):
            return n[: -len(suffix)]
    return n


def main():
    deploy, docs_file, rules_out = sys.argv[1:4]
    docs = open(docs_file).read()
    anchors = github_anchors(docs)
    used_metrics = {}

    # ---------------------------------------------------------------- alerts
    rules = yaml.safe_load(open(os.path.join(deploy, "prometheus/alerts.yml")))
    alerts = []
    for g in rules["groups"]:
        for r in g["rules"]:
            if "alert" not in r:
                continue
            a = r["alert"]
            alerts.append(a)
            for m in METRIC_RE.findall(r["expr"]):
                used_metrics.setdefault(base_metric(m), f"alert {a}")
            if r.get("labels", {}).get("severity") not in ("warning", "critical"):
                err(f"alert {a}: severity label must be warning or critical")
            ann = r.get("annotations", {})
            for k in ("summary", "description", "runbook_url"):
                if not ann.get(k):
                    err(f"alert {a}: missing annotation {k}")
            url = ann.get("runbook_url", "")
            if "#" not in url or not url.split("#", 1)[0].endswith("docs/operations.md"):
                err(f"alert {a}: runbook_url {url!r} must point at docs/operations.md#<anchor>")
            elif url.split("#", 1)[1] not in anchors:
                err(f"alert {a}: runbook anchor #{url.split('#', 1)[1]} not found in {docs_file}")

    tests = yaml.safe_load(open(os.path.join(deploy, "prometheus/alerts_test.yml")))
    fires, quiet = set(), set()
    for t in tests["tests"]:
        for c in t.get("alert_rule_test", []):
            (fires if c.get("exp_alerts") else quiet).add(c["alertname"])
    for a in alerts:
        if a not in fires:
            err(f"alert {a}: no test case where it fires")
        if a not in quiet:
            err(f"alert {a}: no test case where it must not fire")
    for a in (fires | quiet) - set(alerts):
        err(f"alerts_test.yml tests unknown alert {a}")

    # ---------------------------------------------------------------- dashboards
    promql = []
    for path in sorted(glob.glob(os.path.join(deploy, "grafana/dashboards/*.json"))):
        d = json.load(open(path))
        fn = os.path.basename(path)
        if not d.get("uid") or not d.get("title"):
            err(f"{fn}: uid and title are required")
        var_names = {v["name"] for v in d.get("templating", {}).get("list", [])}
        if "datasource" not in var_names:
            err(f"{fn}: no $datasource variable")
        panels = []
        for p in d.get("panels", []):
            panels.append(p)
            panels.extend(p.get("panels", []))
        ids = [p.get("id") for p in panels]
        if len(ids) != len(set(ids)) or None in ids:
            err(f"{fn}: panel ids must be present and unique")
        boxes = []
        for p in panels:
            title = p.get("title", "?")
            gp = p.get("gridPos", {})
            if gp.get("x", 0) + gp.get("w", 0) > 24:
                err(f"{fn}: panel {title!r} extends past 24 columns")
            boxes.append((title, gp.get("x", 0), gp.get("y", 0), gp.get("w", 0), gp.get("h", 0)))
            if p.get("type") == "row":
                continue
            if not p.get("description"):
                err(f"{fn}: panel {title!r} has no description")
            ds = (p.get("datasource") or {}).get("uid")
            if ds != "${datasource}":
                err(f"{fn}: panel {title!r} datasource uid {ds!r}, want ${{datasource}}")
            targets = p.get("targets") or []
            if not targets:
                err(f"{fn}: panel {title!r} has no queries")
            refs = [t.get("refId") for t in targets]
            if len(refs) != len(set(refs)):
                err(f"{fn}: panel {title!r} has duplicate refIds")
            for t in targets:
                expr = t.get("expr", "")
                promql.append((fn, title, expr))
                for m in METRIC_RE.findall(expr):
                    used_metrics.setdefault(base_metric(m), f"{fn} panel {title!r}")
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                if a[1] < b[1] + b[3] and b[1] < a[1] + a[3] and a[2] < b[2] + b[4] and b[2] < a[2] + a[4]:
                    err(f"{fn}: panels {a[0]!r} and {b[0]!r} overlap")

    def fill_vars(expr):
        expr = re.sub(r"\$\{?(__rate_interval|__interval|__range)\}?", "5m", expr)
        return re.sub(r"\$\{?[A-Za-z_]\w*\}?", ".*", expr)

    out = {"groups": [{"name": "dashboard-queries", "rules": [
        {"record": f"dashboard:query_{i}", "expr": fill_vars(e)} for i, (_, _, e) in enumerate(promql)]}]}
    with open(rules_out, "w") as f:
        yaml.safe_dump(out, f)

    # ---------------------------------------------------------------- metric names vs docs
    for m, where in sorted(used_metrics.items()):
        if f"`{m}`" not in docs and f"`{m}{{" not in docs:
            err(f"metric {m} (used by {where}) is not documented in {docs_file}")

    for e in errors:
        print("ERROR", e)
    print(f"{len(alerts)} alerts, {len(promql)} dashboard queries, {len(used_metrics)} metrics cross-checked; {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
