#!/usr/bin/env bash
# shellcheck disable=SC2317 # functions run indirectly (check, trap, "install_$t")
# deploy/validate.sh — offline checks of everything under deploy/.
#
# Installs its tools (idempotently, pinned) into a cache directory, then checks:
# Prometheus rules and their unit tests, the Prometheus config, the Grafana
# dashboards, the metric names they use, the Helm chart (lint, render, schema
# validation with ServiceMonitor on and off), the compose file, and the
# ClickHouse user files. Prints one summary line per check; exits non-zero if
# any check failed.
#
#   deploy/validate.sh               # install what is missing, then check
#   deploy/validate.sh --tools-only  # install only
#
# Environment:
#   USAGEPIPE_TOOLS_DIR   where tools go (default ~/.cache/usagepipe-deploy-tools)
#   VERBOSE=1             print the output of passing checks too
set -Eeuo pipefail

HELM_VERSION=v3.19.0               # go install helm.sh/helm/v3/cmd/helm@…
KUBERNETES_VALIDATE_VERSION=1.37.0 # PyPI; bundles the Kubernetes schemas
CHDB_CORE_VERSION=${CHDB_CORE_VERSION:-26.9.0} # the engine chdb 4.4.0 (schema tests) uses: one download
PROMETHEUS_DEB_UPSTREAM=2.42.      # Debian 12's prometheus package (promtool only)
DOCKER_COMPOSE_DEB_UPSTREAM=1.29.  # Debian 12's docker-compose package
# Kubernetes versions the rendered chart must be valid for (oldest, newest).
K8S_VERSIONS=(1.29.0 1.37.0)
HELM_KUBE_VERSION=1.33.0 # what `helm template` pretends the cluster runs

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
tools=${USAGEPIPE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/usagepipe-deploy-tools}
bin=$tools/bin
venv=$tools/venv
chart=$here/helm/usagepipe
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

log() { printf '%s\n' "validate: $*" >&2; }
now() { date +%s.%N; }
since() { awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.1fs", e - s }'; }

# ---------------------------------------------------------------- tools

apt_ready=0
apt_update_once() {
	if [[ $apt_ready == 0 ]]; then
		log "apt-get update"
		DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
		apt_ready=1
	fi
}

# promtool: only the binary, extracted from Debian's prometheus package, so
# that no prometheus service is installed, let alone started.
install_promtool() {
	if [[ -x $bin/promtool ]] && "$bin/promtool" --version 2>&1 | grep -q "version $PROMETHEUS_DEB_UPSTREAM"; then
		return
	fi
	apt_update_once
	local ver
	ver=$(apt-cache policy prometheus | awk '/Candidate:/ { print $2 }')
	if [[ $ver != "$PROMETHEUS_DEB_UPSTREAM"* && $ver != *":$PROMETHEUS_DEB_UPSTREAM"* ]]; then
		log "prometheus candidate is '$ver', want $PROMETHEUS_DEB_UPSTREAM*"
		return 1
	fi
	log "promtool from prometheus $ver"
	local d=$work/prometheus-deb
	mkdir -p "$d" "$bin"
	# Downloads as root into our temp dir (the _apt sandbox user cannot enter it).
	(cd "$d" && apt-get download -qq -o APT::Sandbox::User=root "prometheus=$ver" >/dev/null)
	dpkg-deb -x "$d"/prometheus_*.deb "$d/x"
	install -m 0755 "$d/x/usr/bin/promtool" "$bin/promtool"
}

install_helm() {
	if [[ -x $bin/helm ]] && [[ $("$bin/helm" version --template '{{.Version}}' 2>/dev/null) == "$HELM_VERSION" ]]; then
		return
	fi
	log "go install helm $HELM_VERSION (takes a minute or two)"
	mkdir -p "$bin"
	if ! (cd "$tools" && GOBIN=$bin GOFLAGS="" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION") >"$work/helm-install.log" 2>&1; then
		cat "$work/helm-install.log" >&2
		return 1
	fi
	"$bin/helm" version >/dev/null
}

# Python tools in one venv: kubernetes-validate (schemas bundled, works
# offline) and chdb-core (an embedded ClickHouse to parse our SQL).
pip_version() { "$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null; }
install_python_tools() {
	if [[ $(pip_version kubernetes-validate) == "$KUBERNETES_VALIDATE_VERSION" &&
		$(pip_version chdb-core) == "$CHDB_CORE_VERSION" ]]; then
		return
	fi
	log "pip install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION chdb-core==$CHDB_CORE_VERSION"
	[[ -x $venv/bin/python ]] || python3 -m venv "$venv"
	"$venv/bin/pip" install -q --disable-pip-version-check \
		"kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "chdb-core==$CHDB_CORE_VERSION" "PyYAML>=6"
}

# docker-compose (v1, Python) from Debian: parses and validates a compose file
# without a Docker engine. Optional: if it cannot be installed the compose
# check is skipped (and said so), not passed.
compose_cmd=()
install_docker_compose() {
	if command -v docker-compose >/dev/null && docker-compose version --short 2>/dev/null | grep -q "^$DOCKER_COMPOSE_DEB_UPSTREAM"; then
		compose_cmd=(docker-compose)
		return
	fi
	if docker compose version >/dev/null 2>&1; then
		compose_cmd=(docker compose)
		return
	fi
	apt_update_once
	log "apt-get install docker-compose"
	if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; then
		compose_cmd=(docker-compose)
	else
		log "docker-compose is not installable here; the compose check will be skipped"
	fi
}

# ---------------------------------------------------------------- checks

results=()
failures=0

# check NAME COMMAND...: runs COMMAND, records PASS/FAIL with its duration.
check() {
	local name=$1 start out=$work/out
	shift
	start=$(now)
	if "$@" >"$out" 2>&1; then
		results+=("PASS  $name ($(since "$start"))")
		if [[ ${VERBOSE:-0} == 1 ]]; then sed 's/^/    /' "$out" >&2; fi
	else
		results+=("FAIL  $name ($(since "$start"))")
		failures=$((failures + 1))
		log "FAIL $name:"
		sed 's/^/    /' "$out" >&2
	fi
}
skip() { results+=("SKIP  $1 ($2)"); }

start_all=$(now)
start=$(now)
tools_ok=1
# ShellCheck from Debian (0.9 on Debian 12) lints this script and its helpers.
install_shellcheck() {
	command -v shellcheck >/dev/null && return
	apt_update_once
	log "apt-get install shellcheck"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends shellcheck >/dev/null
}

for t in promtool helm python_tools docker_compose shellcheck; do
	if ! "install_$t"; then
		log "installing $t failed"
		tools_ok=0
	fi
done
if [[ $tools_ok == 1 ]]; then
	results+=("PASS  tools installed in $tools ($(since "$start"))")
else
	results+=("FAIL  tools installed in $tools ($(since "$start"))")
	failures=$((failures + 1))
fi
if [[ ${1:-} == --tools-only ]]; then
	printf '%s\n' "${results[@]}"
	exit $((failures > 0))
fi

promtool=$bin/promtool
helm=$bin/helm
py=$venv/bin/python
docs=$root/docs/operations.md
k8s_args=()
for v in "${K8S_VERSIONS[@]}"; do k8s_args+=(--k8s-version "$v"); done

# ---- Prometheus
check "promtool check rules prometheus/alerts.yml" "$promtool" check rules "$here/prometheus/alerts.yml"
check "promtool test rules prometheus/alerts_test.yml" "$promtool" test rules "$here/prometheus/alerts_test.yml"
check "promtool check config prometheus/prometheus.yml" "$promtool" check config "$here/prometheus/prometheus.yml"

# ---- Grafana
for f in "$here"/grafana/dashboards/*.json; do
	check "json.tool parses ${f#"$here"/}" python3 -m json.tool "$f"
done
check "alerts <-> tests <-> runbooks <-> dashboards <-> documented metrics" \
	"$py" "$here/tools/observability_check.py" "$here" "$docs" "$work/dashboard-queries.yml"
check "promtool parses every dashboard query" "$promtool" check rules "$work/dashboard-queries.yml"
check "grafana provisioning files are YAML" "$py" -c '
import sys, yaml
for p in sys.argv[1:]:
    d = yaml.safe_load(open(p)); assert d["apiVersion"] == 1, p
' "$here"/grafana/provisioning/*/*.yml

# ---- Helm
helm_render() { # OUT HELM-ARGS...
	local out=$1
	shift
	"$helm" template usagepipe "$chart" --namespace telemetry --kube-version "$HELM_KUBE_VERSION" "$@" >"$out"
}
check_render() { # OUT CHECK-ARGS... -- HELM-ARGS...
	local out=$1 cargs=()
	shift
	while [[ $1 != -- ]]; do cargs+=("$1"); shift; done
	shift
	helm_render "$out" "$@" && "$py" "$here/tools/k8s_check.py" "${k8s_args[@]}" "${cargs[@]}" "$out"
}
must_refuse() { # one bad value set per line; each must fail to render
	local bad=0 args
	while read -r -a args; do
		[[ ${#args[@]} == 0 ]] && continue
		if helm_render /dev/null "${args[@]}" 2>"$work/refuse.err"; then
			echo "rendered but should be refused: ${args[*]}"
			bad=1
		else
			echo "refused as expected: ${args[*]}: $(tail -c 160 "$work/refuse.err" | tr '\n' ' ')"
		fi
	done <<'CASES'
--set kafka.sasl.mechanism=GSSAPI
--set kafka.sasl.mechanism=SCRAM-SHA-256
--set kafka.sasl.mechanism=SCRAM-SHA-256 --set kafka.sasl.user=u
--set kafka.sasl.mechanism=PLAIN --set kafka.sasl.user=u --set kafka.sasl.passwordSecret.name=s
--set kafka.tls.enabled=true --set kafka.tls.secretName=t --set kafka.tls.certKey=tls.crt
--set clickhouse.tls.caSecretName=ca
--set pipeline.fiscalYearStartMonth=13
--set pipeline.dedupWindow=1day
--set log.format=xml
--set clickhouse.pasword=typo
CASES
	return "$bad"
}
check "helm lint --strict (default values)" "$helm" lint --strict "$chart"
for v in "$chart"/ci/*.yaml; do
	check "helm lint --strict (${v#"$chart"/})" "$helm" lint --strict "$chart" -f "$v"
done
check "helm template | kubernetes-validate, ServiceMonitor off" \
	check_render "$work/render-off.yaml" --expect Deployment --expect Service --expect PodDisruptionBudget \
	--expect ServiceAccount --absent ServiceMonitor --
check "helm template | kubernetes-validate, ServiceMonitor on" \
	check_render "$work/render-on.yaml" --expect Deployment --expect ServiceMonitor -- --set serviceMonitor.enabled=true
for v in "$chart"/ci/*.yaml; do
	check "helm template | kubernetes-validate, ${v#"$chart"/}" check_render "$work/render-ci.yaml" --expect Deployment -- -f "$v"
done
check "helm refuses inconsistent values" must_refuse

# ---- Compose
compose_refs() { # every bind-mounted path and secret file of the compose file exists
	"${compose_cmd[@]}" -f "$here/docker-compose.yml" config >"$work/compose.yml" && "$py" - "$work/compose.yml" <<'PY'
import os, sys, yaml
c = yaml.safe_load(open(sys.argv[1])); missing = []
for name, s in c["services"].items():
    for v in s.get("volumes", []):
        src = v.split(":")[0] if isinstance(v, str) else (v.get("source") if v.get("type") == "bind" else None)
        if src and src.startswith("/") and not os.path.exists(src):
            missing.append(f"{name}: {src}")
for name, s in c.get("secrets", {}).items():
    if "file" in s and not os.path.exists(s["file"]):
        missing.append(f"secret {name}: {s['file']}")
print("\n".join(missing) or "all bind mounts and secret files exist")
sys.exit(1 if missing else 0)
PY
}
if ((${#compose_cmd[@]})); then
	check "${compose_cmd[*]} config (docker-compose.yml)" "${compose_cmd[@]}" -f "$here/docker-compose.yml" config -q
	check "compose bind mounts and secrets exist" compose_refs
else
	skip "docker-compose config" "docker-compose not installable here"
fi

# ---- ClickHouse access
check "ClickHouse ${CHDB_CORE_VERSION%.*} parses clickhouse/access.sql" "$py" "$here/tools/clickhouse_sql_check.py" "$here/clickhouse/access.sql"
printf '%s' 'validate-password' >"$work/pw"
check "ClickHouse ${CHDB_CORE_VERSION%.*} parses the SQL of clickhouse/create-users.sh" \
	env USAGEPIPE_PASSWORD_FILE="$work/pw" ANALYST_PASSWORD_FILE="$work/pw" \
	CLICKHOUSE_CLIENT="$py $here/tools/clickhouse_sql_check.py --stdin" "$here/clickhouse/create-users.sh"
if command -v clickhouse-server >/dev/null && command -v clickhouse-client >/dev/null; then
	check "clickhouse/users-18.16.xml on a live ClickHouse 18.16" "$here/clickhouse/check-18.16.sh"
else
	skip "clickhouse/users-18.16.xml on a live ClickHouse 18.16" "no clickhouse-server; apt-get install clickhouse-server clickhouse-client"
fi

# ---- Scripts
check "shellcheck validate.sh and clickhouse/*.sh" shellcheck -x "$here/validate.sh" "$here"/clickhouse/*.sh "$here"/clickhouse/initdb/*.sh
if ! docker info >/dev/null 2>&1; then
	skip "docker build -f deploy/Dockerfile" "no Docker engine here"
fi

printf '\n%s\n' "validate: summary"
printf '  %s\n' "${results[@]}"
printf '%s\n' "validate: $((${#results[@]})) checks, $failures failed, total $(since "$start_all")"
exit $((failures > 0))
