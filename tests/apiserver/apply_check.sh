#!/usr/bin/env bash
# apply_check.sh: apply deploy/kubernetes to a real kube-apiserver (on an etcd of its own,
# both on 127.0.0.1 and stopped on exit), then apply it again with another image tag (an
# upgrade, done as deploy/README.md says: the tag changed in kustomization.yaml's
# `images:`), and check that both applies exit 0 with nothing on stderr (Pod Security
# warnings land there), that the upgrade made a new topics Job named after the new tag
# and that every Deployment now runs the new image. Last, each pod template is sent as a
# Pod to a server-side dry run, so PodSecurity's enforce level judges it too (no
# controller-manager runs here to make the pods).
#
# Not part of `make test`: `make apply-check` builds kube-apiserver and kubectl
# (tests/apiserver/go.mod) into .cache/bin and runs this.
#
# Environment: KUBE_APISERVER, KUBECTL (default .cache/bin/...), ETCD (default: etcd on
# PATH, Debian's etcd-server), DEPLOY_DIR (what is applied, default deploy/kubernetes),
# NEW_TAG (the upgrade's tag, default 0.0.0-apply-check), POD_SECURITY_DEFAULT (the
# server's PodSecurity level for namespaces without a label, default privileged, so that
# the namespace's own labels must enforce restricted), KEEP_WORK=1 keeps the temporary
# directory (logs, kubeconfig) after a success too. Exit 0: every check passed; 1: a
# problem (all are listed at the end); 2: a binary missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KUBE_APISERVER="${KUBE_APISERVER:-$ROOT/.cache/bin/kube-apiserver}"
KUBECTL="${KUBECTL:-$ROOT/.cache/bin/kubectl}"
ETCD="${ETCD:-$(command -v etcd || true)}"
NEW_TAG="${NEW_TAG:-0.0.0-apply-check}"
POD_SECURITY_DEFAULT="${POD_SECURITY_DEFAULT:-privileged}"
BASE="$(cd "${DEPLOY_DIR:-$ROOT/deploy/kubernetes}" && pwd)"
NS=streamproc

for bin in "$KUBE_APISERVER" "$KUBECTL" "$ETCD"; do
  if [[ -z "$bin" || ! -x "$bin" ]]; then
    echo "apply-check: missing executable '${bin:-etcd}' (make apply-check builds kube-apiserver" \
      "and kubectl; etcd comes from Debian's etcd-server)" >&2
    exit 2
  fi
done

WORK="$(mktemp -d -t apply-check.XXXXXX)"
ETCD_PID=""
APISERVER_PID=""
OK=0

stop() { # stop PID: TERM, then KILL after 15 s
  local pid="$1" i
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  stop "$APISERVER_PID"
  stop "$ETCD_PID"
  if [[ "$OK" == 1 && "${KEEP_WORK:-}" != 1 ]]; then
    rm -rf "$WORK"
  else
    echo "apply-check: logs and kubeconfig kept in $WORK" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() { # what stops the check: the servers, or nothing left to check
  echo "apply-check: FAIL: $*" >&2
  exit 1
}

# What the check found wrong: counted and printed, and the check goes on to the end.
PROBLEMS=()
problem() {
  echo "apply-check: PROBLEM: $*" >&2
  PROBLEMS+=("$*")
}

# Dumps the end of a log; for failures.
tail_log() {
  echo "--- last lines of $1" >&2
  tail -n 30 "$1" >&2 || true
}

# Three free TCP ports on 127.0.0.1 (bound together, so they differ).
read -r P_ETCD P_PEER P_API < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)

# --- etcd
"$ETCD" --name apply-check --data-dir "$WORK/etcd" \
  --listen-client-urls "http://127.0.0.1:$P_ETCD" --advertise-client-urls "http://127.0.0.1:$P_ETCD" \
  --listen-peer-urls "http://127.0.0.1:$P_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$P_PEER" \
  --initial-cluster "apply-check=http://127.0.0.1:$P_PEER" \
  >"$WORK/etcd.log" 2>&1 &
ETCD_PID=$!
for ((i = 0; ; i++)); do
  kill -0 "$ETCD_PID" 2>/dev/null || { tail_log "$WORK/etcd.log"; fail "etcd exited"; }
  curl -fsS "http://127.0.0.1:$P_ETCD/health" 2>/dev/null | grep -q '"health":"true"' && break
  ((i < 300)) || { tail_log "$WORK/etcd.log"; fail "etcd not healthy after 30 s"; }
  sleep 0.1
done

# --- kube-apiserver: service-account keys, an admin token, PodSecurity's defaults
openssl genrsa -out "$WORK/sa.key" 2048 2>/dev/null
openssl rsa -in "$WORK/sa.key" -pubout -out "$WORK/sa.pub" 2>/dev/null
TOKEN="$(openssl rand -hex 24)"
echo "$TOKEN,apply-check-admin,apply-check-admin,system:masters" >"$WORK/tokens.csv"
cat >"$WORK/admission.yaml" <<EOF
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
  - name: PodSecurity
    configuration:
      apiVersion: pod-security.admission.config.k8s.io/v1
      kind: PodSecurityConfiguration
      defaults:
        enforce: $POD_SECURITY_DEFAULT
        enforce-version: latest
        audit: $POD_SECURITY_DEFAULT
        audit-version: latest
        warn: $POD_SECURITY_DEFAULT
        warn-version: latest
      exemptions:
        usernames: []
        runtimeClasses: []
        namespaces: []
EOF
"$KUBE_APISERVER" \
  --etcd-servers="http://127.0.0.1:$P_ETCD" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$P_API" \
  --endpoint-reconciler-type=none \
  --cert-dir="$WORK/certs" \
  --anonymous-auth=false --token-auth-file="$WORK/tokens.csv" \
  --authorization-mode=RBAC \
  --enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,PodSecurity,ResourceQuota \
  --admission-control-config-file="$WORK/admission.yaml" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$WORK/sa.pub" \
  --service-account-signing-key-file="$WORK/sa.key" \
  --service-cluster-ip-range=10.96.0.0/24 \
  --profiling=false \
  >"$WORK/kube-apiserver.log" 2>&1 &
APISERVER_PID=$!

# The serving certificate is self-signed, written to --cert-dir with its CA.
for ((i = 0; ; i++)); do
  kill -0 "$APISERVER_PID" 2>/dev/null || { tail_log "$WORK/kube-apiserver.log"; fail "kube-apiserver exited"; }
  [[ -s "$WORK/certs/apiserver.crt" ]] && break
  ((i < 600)) || { tail_log "$WORK/kube-apiserver.log"; fail "no serving certificate after 60 s"; }
  sleep 0.1
done
export KUBECONFIG="$WORK/kubeconfig" KUBECACHEDIR="$WORK/kube-cache" KUBERC=off
cat >"$KUBECONFIG" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: apply-check
    cluster:
      server: https://127.0.0.1:$P_API
      certificate-authority: $WORK/certs/apiserver.crt
users:
  - name: apply-check-admin
    user:
      token: $TOKEN
contexts:
  - name: apply-check
    context:
      cluster: apply-check
      user: apply-check-admin
current-context: apply-check
EOF
kc() { "$KUBECTL" "$@"; }

START=$SECONDS
for ((i = 0; ; i++)); do
  kill -0 "$APISERVER_PID" 2>/dev/null || { tail_log "$WORK/kube-apiserver.log"; fail "kube-apiserver exited"; }
  [[ "$(kc get --raw /readyz 2>/dev/null)" == ok ]] && break
  ((i < 240)) || { tail_log "$WORK/kube-apiserver.log"; fail "kube-apiserver not ready after 120 s"; }
  sleep 0.5
done
SERVER_VERSION="$(kc version -o json 2>/dev/null | python3 -c \
  'import json, sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')"
echo "apply-check: kube-apiserver $SERVER_VERSION ready on 127.0.0.1:$P_API in $((SECONDS - START)) s (etcd on $P_ETCD)"

# apply N DIR: kubectl apply -k DIR; fails on a non-zero exit or anything on stderr.
apply() {
  local n="$1" dir="$2" rc=0
  kc apply -k "$dir" >"$WORK/apply$n.out" 2>"$WORK/apply$n.err" || rc=$?
  sed "s/^/  apply $n: /" "$WORK/apply$n.out"
  if [[ -s "$WORK/apply$n.err" ]]; then
    sed "s/^/  apply $n stderr: /" "$WORK/apply$n.err" >&2
  fi
  ((rc == 0)) || problem "apply $n exited $rc"
  [[ ! -s "$WORK/apply$n.err" ]] || problem "apply $n printed on stderr: $(head -c 400 "$WORK/apply$n.err")"
}

# name=image of each Deployment (or Job), one a line, sorted.
images() {
  kc -n "$NS" get "$1" -o jsonpath='{range .items[*]}{.metadata.name}={.spec.template.spec.containers[*].image}{"\n"}{end}' | sort
}

# --- apply 1: deploy/kubernetes as it is
apply 1 "$BASE"
DEPLOY_BEFORE="$(images deployments)"
JOBS_BEFORE="$(images jobs)"
[[ -n "$DEPLOY_BEFORE" ]] || fail "apply 1 made no Deployment"
[[ "$(wc -l <<<"$JOBS_BEFORE")" == 1 ]] || fail "apply 1 should make one topics Job, made: $JOBS_BEFORE"
OLD_JOB="${JOBS_BEFORE%%=*}"

# --- apply 2: an upgrade, the image tag changed where deploy/README.md says to change it
cp -r "$BASE" "$WORK/upgrade"
sed -E -i "s/^([[:space:]]+newTag:).*/\1 $NEW_TAG/" "$WORK/upgrade/kustomization.yaml"
[[ "$(grep -cE "^[[:space:]]+newTag: $NEW_TAG\$" "$WORK/upgrade/kustomization.yaml")" == 1 ]] ||
  fail "expected one images: newTag in $BASE/kustomization.yaml"
apply 2 "$WORK/upgrade"
DEPLOY_AFTER="$(images deployments)"
JOBS_AFTER="$(images jobs)"
# The topics Job that the upgrade names (kustomize's replacement puts the tag in its name).
NEW_JOB="$(kc create --dry-run=client -k "$WORK/upgrade" -o name | sed -n 's|^job.batch/||p')"
[[ "$(wc -l <<<"$NEW_JOB")" == 1 && -n "$NEW_JOB" ]] || fail "the upgrade should name one Job, names: $NEW_JOB"
[[ "$NEW_JOB" != "$OLD_JOB" ]] || problem "the upgrade's topics Job keeps the old name $OLD_JOB"
[[ "$NEW_JOB" =~ ^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
  problem "the upgrade's topics Job $NEW_JOB is not a DNS label"

grep -qxF "job.batch/$NEW_JOB created" "$WORK/apply2.out" || problem "apply 2 did not create job.batch/$NEW_JOB"
grep -qx "$NEW_JOB=[^ ]*:$NEW_TAG" <<<"$JOBS_AFTER" || problem "no Job $NEW_JOB running :$NEW_TAG, Jobs: $JOBS_AFTER"
grep -qxF "$JOBS_BEFORE" <<<"$JOBS_AFTER" || problem "the old Job $OLD_JOB changed or went: $JOBS_AFTER"
[[ "$(cut -d= -f1 <<<"$DEPLOY_BEFORE")" == "$(cut -d= -f1 <<<"$DEPLOY_AFTER")" ]] ||
  problem "the Deployments differ: before: $DEPLOY_BEFORE after: $DEPLOY_AFTER"
while IFS='=' read -r name image; do
  [[ "$image" == *":$NEW_TAG" ]] || problem "Deployment $name runs $image after the upgrade, not :$NEW_TAG"
  if grep -qxF "$name=$image" <<<"$DEPLOY_BEFORE"; then
    problem "Deployment $name's image did not change ($image)"
  fi
done <<<"$DEPLOY_AFTER"

# --- PodSecurity enforce on each pod template: as a Pod, server-side dry run. The
# ServiceAccount admission needs the namespace's "default" ServiceAccount, which the
# controller-manager (not run here) would make.
kc -n "$NS" get serviceaccount default >/dev/null 2>&1 || kc -n "$NS" create serviceaccount default >/dev/null
NS_ENFORCE="$(kc get namespace "$NS" -o jsonpath='{.metadata.labels.pod-security\.kubernetes\.io/enforce}')"
kc -n "$NS" get deployments,jobs -o json | python3 -c '
import json, sys
for o in json.load(sys.stdin)["items"]:
    t = o["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": ("dry-run-" + o["metadata"]["name"].replace(".", "-"))[:63].rstrip("-"),
                        "labels": t.get("metadata", {}).get("labels", {})},
           "spec": t["spec"]}
    print(json.dumps(pod))
' >"$WORK/pods.jsonl"
PODS=0
while read -r pod; do
  rc=0
  kc -n "$NS" create --dry-run=server -o name -f - <<<"$pod" >"$WORK/pod.out" 2>"$WORK/pod.err" || rc=$?
  if ((rc != 0)) || [[ -s "$WORK/pod.err" ]]; then
    problem "the server refused or warned about the pod template $(cut -c1-160 <<<"$pod"): $(head -c 400 "$WORK/pod.err")"
  else
    PODS=$((PODS + 1))
  fi
done <"$WORK/pods.jsonl"

# --- summary
say_apply() { # N: its exit and stderr, as recorded
  local n="$1"
  if [[ -s "$WORK/apply$n.err" ]]; then
    echo "$(wc -l <"$WORK/apply$n.err") line(s) on stderr"
  else
    echo "stderr empty"
  fi
}
echo "apply-check: summary (kube-apiserver $SERVER_VERSION, kubectl apply -k)"
echo "  apply 1 (${BASE#"$ROOT"/}): $(wc -l <"$WORK/apply1.out") objects, $(say_apply 1); topics Job $OLD_JOB"
echo "  apply 2 (newTag $NEW_TAG): $(say_apply 2); Jobs now: $(cut -d= -f1 <<<"$JOBS_AFTER" | tr '\n' ' ')"
while IFS='=' read -r name image; do
  echo "    $name: $(grep "^$name=" <<<"$DEPLOY_BEFORE" | cut -d= -f2) -> $image"
done <<<"$DEPLOY_AFTER"
echo "  PodSecurity: $PODS of $(wc -l <"$WORK/pods.jsonl") pod templates admitted as Pods (server" \
  "dry run) with no warning; server default level $POD_SECURITY_DEFAULT, namespace label" \
  "enforce=${NS_ENFORCE:-(none)}"
if ((${#PROBLEMS[@]})); then
  echo "apply-check: FAIL: ${#PROBLEMS[@]} problem(s):"
  printf '  - %s\n' "${PROBLEMS[@]}"
  exit 1
fi
OK=1
echo "apply-check: PASS"
