#!/usr/bin/env bash
# Creates a kind cluster without a default CNI, builds the weft image and
# loads it into the nodes, applies deploy/weft.yaml, waits until every node
# is Ready, then runs the upstream NetworkPolicy conformance tests against it.
#
#   deploy/kind/run.sh            # create, test, delete the cluster
#   KEEP=1 deploy/kind/run.sh     # leave the cluster up afterwards
#
# Needs docker (or podman with KIND_EXPERIMENTAL_PROVIDER=podman), kind,
# kubectl, curl and tar. The conformance tests are the `[Feature:NetworkPolicy]`
# specs of Kubernetes' own e2e suite (test/e2e/network/netpol): the `e2e.test`
# and `ginkgo` binaries of the cluster's exact server version, from
# kubernetes-test-linux-<arch>.tar.gz on dl.k8s.io.
#
# Environment (defaults): CLUSTER (weft), IMAGE (localhost/weft:0.1.0),
# E2E_FOCUS ('\[Feature:NetworkPolicy\]'), E2E_SKIP ('SCTP'),
# E2E_NODES (4, parallel ginkgo processes), WORK (a temp dir), KEEP.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
CLUSTER="${CLUSTER:-weft}"
IMAGE="${IMAGE:-localhost/weft:0.1.0}"
E2E_FOCUS="${E2E_FOCUS:-\[Feature:NetworkPolicy\]}"
E2E_SKIP="${E2E_SKIP:-SCTP}"
E2E_NODES="${E2E_NODES:-4}"
WORK="${WORK:-$(mktemp -d)}"
KEEP="${KEEP:-}"
kubeconfig="$WORK/kubeconfig"

say() { printf '== %s\n' "$*"; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

for tool in docker kind kubectl curl tar; do
  command -v "$tool" >/dev/null || die "$tool is required"
done

cleanup() {
  if [[ -z "$KEEP" ]]; then
    say "deleting cluster $CLUSTER"
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  else
    say "cluster $CLUSTER kept (kubeconfig: $kubeconfig)"
  fi
}

say "building $IMAGE"
docker build -t "$IMAGE" -f "$root/Containerfile" "$root"

say "creating cluster $CLUSTER"
kind create cluster --name "$CLUSTER" --config "$here/kind-config.yaml" --kubeconfig "$kubeconfig"
trap cleanup EXIT
export KUBECONFIG="$kubeconfig"

say "loading $IMAGE into the nodes"
kind load docker-image "$IMAGE" --name "$CLUSTER"

say "applying deploy/weft.yaml"
sed "s|image: localhost/weft:0.1.0|image: $IMAGE|" "$root/deploy/weft.yaml" | kubectl apply -f -
kubectl -n kube-system rollout status daemonset/weft --timeout=5m
# The agent writes the conflist only once its node is ready, so Ready nodes
# mean weft is in place on each of them.
kubectl wait --for=condition=Ready nodes --all --timeout=5m
kubectl get nodes -o wide

# The server's own version (the test binaries must match it).
version="$(kubectl get --raw /version | sed -n 's/.*"gitVersion": *"\(v[^"+]*\)".*/\1/p')"
[[ -n "$version" ]] || die "cannot tell the server version"
case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *) die "no kubernetes test binaries for $(uname -m)" ;;
esac
bin="$WORK/kubernetes/test/bin"
if [[ ! -x "$bin/e2e.test" ]]; then
  say "fetching the e2e tests of Kubernetes $version ($arch)"
  curl -fsSL "https://dl.k8s.io/release/$version/kubernetes-test-linux-$arch.tar.gz" \
    | tar -xz -C "$WORK" kubernetes/test/bin/e2e.test kubernetes/test/bin/ginkgo
fi

say "running the NetworkPolicy conformance tests (focus $E2E_FOCUS, skip $E2E_SKIP)"
"$bin/ginkgo" --nodes="$E2E_NODES" --focus="$E2E_FOCUS" --skip="$E2E_SKIP" --timeout=3h \
  "$bin/e2e.test" -- --kubeconfig="$kubeconfig" --provider=local --report-dir="$WORK/report"
say "passed; reports in $WORK/report"
