#!/usr/bin/env python3
"""Offline checks of rendered Kubernetes manifests (helm template output).

Usage: k8s_check.py [--k8s-version V]... [--expect KIND]... [--absent KIND]... FILE

- Every object of a built-in kind is validated with kubernetes-validate's
  strict schemas (unknown fields are errors) for each --k8s-version.
  A built-in kind without a schema is an error, not a warning.
- CRD kinds (ServiceMonitor) have no bundled schema: they get a structural
  check instead (apiVersion, selector, endpoints that name a Service port).
- Cross-object checks: Service and PDB selectors match the Deployment's pod
  labels, probes and Service target a declared container port, the pod runs
  as non-root with a read-only root filesystem, and no secret value is passed
  in the environment (only *_FILE paths).
"""
import argparse
import sys

import yaml
from kubernetes_validate import utils as kv

CRD_KINDS = {"ServiceMonitor": "monitoring.coreos.com/v1"}

errors = []


def err(msg):
    errors.append(msg)


def name(obj):
    return f'{obj.get("kind")}/{obj.get("metadata", {}).get("name")}'


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def check_service_monitor(sm, services):
    if sm.get("apiVersion") != CRD_KINDS["ServiceMonitor"]:
        err(f"{name(sm)}: apiVersion {sm.get('apiVersion')}, want {CRD_KINDS['ServiceMonitor']}")
    spec = sm.get("spec") or {}
    allowed = {"jobLabel", "selector", "namespaceSelector", "endpoints", "targetLabels", "podTargetLabels", "sampleLimit"}
    for k in spec:
        if k not in allowed:
            err(f"{name(sm)}: unexpected spec field {k!r}")
    sel = (spec.get("selector") or {}).get("matchLabels")
    if not sel:
        err(f"{name(sm)}: spec.selector.matchLabels is empty")
    targets = [s for s in services if matches(sel, s["metadata"].get("labels", {}))]
    if not targets:
        err(f"{name(sm)}: selector {sel} matches no Service in the render")
    if spec.get("jobLabel") and targets and spec["jobLabel"] not in targets[0]["metadata"].get("labels", {}):
        err(f"{name(sm)}: jobLabel {spec['jobLabel']!r} is not a label of the Service")
    eps = spec.get("endpoints") or []
    if not eps:
        err(f"{name(sm)}: no endpoints")
    port_names = {p.get("name") for s in targets for p in s["spec"].get("ports", [])}
    for ep in eps:
        for k in ep:
            if k not in {"port", "path", "interval", "scrapeTimeout", "scheme", "tlsConfig", "relabelings", "metricRelabelings", "honorLabels"}:
                err(f"{name(sm)}: unexpected endpoint field {k!r}")
        if ep.get("port") not in port_names:
            err(f"{name(sm)}: endpoint port {ep.get('port')!r} is not a port name of the selected Service ({sorted(port_names)})")


def check_deployment(dep, services, pdbs):
    tmpl = dep["spec"]["template"]
    labels = tmpl["metadata"].get("labels", {})
    if not matches(dep["spec"]["selector"].get("matchLabels"), labels):
        err(f"{name(dep)}: selector does not match its pod labels")
    pod = tmpl["spec"]
    psc = pod.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True:
        err(f"{name(dep)}: pod securityContext.runAsNonRoot is not true")
    for c in pod["containers"]:
        sc = c.get("securityContext") or {}
        if sc.get("readOnlyRootFilesystem") is not True:
            err(f"{name(dep)}/{c['name']}: readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            err(f"{name(dep)}/{c['name']}: allowPrivilegeEscalation is not false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            err(f"{name(dep)}/{c['name']}: capabilities do not drop ALL")
        ports = {p.get("name") for p in c.get("ports", [])}
        for probe in ("livenessProbe", "readinessProbe"):
            p = (c.get(probe) or {}).get("httpGet")
            if not p:
                err(f"{name(dep)}/{c['name']}: no {probe}.httpGet")
            elif p.get("port") not in ports:
                err(f"{name(dep)}/{c['name']}: {probe} port {p.get('port')!r} not declared")
        want = {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
        for probe, path in want.items():
            got = ((c.get(probe) or {}).get("httpGet") or {}).get("path")
            if got != path:
                err(f"{name(dep)}/{c['name']}: {probe} path {got!r}, want {path!r}")
        for e in c.get("env", []):
            n = e.get("name", "")
            if ("PASSWORD" in n or "SECRET" in n or n.endswith("_KEY")) and not n.endswith("_FILE"):
                err(f"{name(dep)}/{c['name']}: env {n} carries a secret value; pass a *_FILE path instead")
            if "value" in e and not isinstance(e["value"], str):
                err(f"{name(dep)}/{c['name']}: env {n} value is not a string")
        mounts = {m["name"] for m in c.get("volumeMounts", [])}
        vols = {v["name"] for v in pod.get("volumes", [])}
        for m in mounts - vols:
            err(f"{name(dep)}/{c['name']}: volumeMount {m} has no volume")
        for e in c.get("env", []):
            v = e.get("value", "")
            if e.get("name", "").endswith("_FILE") and isinstance(v, str):
                if not any(v.startswith(m["mountPath"].rstrip("/") + "/") for m in c.get("volumeMounts", [])):
                    err(f"{name(dep)}/{c['name']}: {e['name']}={v} is not under any volumeMount")
    if pod.get("automountServiceAccountToken") is not False:
        err(f"{name(dep)}: automountServiceAccountToken is not false")
    for s in services:
        if matches(s["spec"].get("selector"), labels):
            cports = {p.get("name") for c in pod["containers"] for p in c.get("ports", [])}
            for p in s["spec"].get("ports", []):
                if isinstance(p.get("targetPort"), str) and p["targetPort"] not in cports:
                    err(f"{name(s)}: targetPort {p['targetPort']!r} is not a container port name")
            break
    else:
        err(f"{name(dep)}: no Service selects its pods")
    for pdb in pdbs:
        if not matches(pdb["spec"]["selector"].get("matchLabels"), labels):
            err(f"{name(pdb)}: selector does not match the Deployment's pods")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--k8s-version", action="append", default=[])
    ap.add_argument("--expect", action="append", default=[], help="kind that must be present")
    ap.add_argument("--absent", action="append", default=[], help="kind that must not be present")
    ap.add_argument("file")
    a = ap.parse_args()
    with open(a.file) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    kinds = [d.get("kind") for d in docs]
    for k in a.expect:
        if k not in kinds:
            err(f"expected a {k} in the render, got {kinds}")
    for k in a.absent:
        if k in kinds:
            err(f"{k} must not be rendered here")
    services = [d for d in docs if d.get("kind") == "Service"]
    pdbs = [d for d in docs if d.get("kind") == "PodDisruptionBudget"]
    validated = 0
    for d in docs:
        if d.get("kind") in CRD_KINDS:
            check_service_monitor(d, services)
            continue
        for v in a.k8s_version:
            try:
                kv.validate(d, v, strict=True)
                validated += 1
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                err(f"{name(d)} (k8s {v}): {path}: {e.message}")
            except (kv.SchemaNotFoundError, kv.InvalidSchemaError) as e:
                err(f"{name(d)} (k8s {v}): {e.message}")
        if d.get("kind") == "Deployment":
            check_deployment(d, services, pdbs)
    for e in errors:
        print("ERROR", e)
    print(f"{len(docs)} objects ({', '.join(kinds)}); {validated} strict schema validations; {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
