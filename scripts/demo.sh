#!/usr/bin/env bash
# weft demo: a node namespace, two pods wired by the real `weft` binary
# exactly as a kubelet would call it, their CNI results, a ping between them,
# and a clean teardown (CNI DEL, then the namespaces). Everything lives in
# namespaces named weftdemo-<pid>-*; the root namespace is not touched.
set -euo pipefail
BIN=$(cd "${1:?usage: demo.sh BIN_DIR}" && pwd)
[ "$(id -u)" = 0 ] || { echo "demo: needs root (network namespaces)"; exit 1; }
P=weftdemo-$$
DATA=$(mktemp -d /tmp/weft-demo.XXXXXX)
NODE=$P-node
CONF='{"cniVersion":"1.0.0","name":"weft","type":"weft","bridge":"weft0",
  "clusterCIDR":"10.244.0.0/16",
  "ipam":{"type":"weft-ipam","ranges":[[{"subnet":"10.244.1.0/24"}]],
          "routes":[{"dst":"0.0.0.0/0"}],"dataDir":"'"$DATA"'"}}'

cni() { # COMMAND POD
  ip netns exec "$NODE" env CNI_COMMAND="$1" CNI_CONTAINERID="$P-$2" \
    CNI_NETNS="/run/netns/$P-$2" CNI_IFNAME=eth0 CNI_PATH="$BIN" \
    CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=$2" \
    "$BIN/weft" <<<"$CONF"
}
cleanup() {
  for pod in a b; do cni DEL "$pod" >/dev/null 2>&1 || true; ip netns del "$P-$pod" 2>/dev/null || true; done
  ip netns del "$NODE" 2>/dev/null || true
  rm -rf "$DATA"
}
trap cleanup EXIT INT TERM

ip netns add "$NODE"
ip -n "$NODE" link set lo up
for pod in a b; do
  ip netns add "$P-$pod"
  echo "== CNI ADD pod $pod"
  result=$(cni ADD "$pod")
  if command -v python3 >/dev/null; then python3 -m json.tool <<<"$result"; else echo "$result"; fi
done
A=$(ip -n "$P-a" -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)
B=$(ip -n "$P-b" -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)
echo "== node $NODE: bridge and ports (hairpin on)"
ip -n "$NODE" -d link show type bridge_slave | grep -oE '^[0-9]+: [^:]+|hairpin (on|off)' | paste - -
echo "== sysctls in the node netns"
ip netns exec "$NODE" sysctl net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables
echo "== ping pod a ($A) -> pod b ($B)"
ip netns exec "$P-a" ping -c 3 -W 1 "$B"
echo "== CNI DEL both pods (twice, as containerd does)"
for pod in a b; do cni DEL "$pod"; cni DEL "$pod"; done
echo "allocations left: $(find "$DATA" -maxdepth 2 -name '10.*' | wc -l)"
