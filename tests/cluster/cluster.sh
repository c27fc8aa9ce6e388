#!/usr/bin/env bash
# A throw-away two-node cluster on this machine, for the tests in tests/cluster.
#
#   cluster.sh up DIR           two nodes, node1 (10.99.0.1) and node2 (10.99.0.2): each a network
#                               namespace of its own (joined by a veth pair, addresses only inside
#                               them) and a UTS namespace (its own hostname), held by one process
#                               per node. Both see this machine's file system, except that each
#                               has a /tmp of its own (DIR/tmp-NODE, as real nodes have local
#                               disks: Slurm's PMIx puts same-named folders there) and an
#                               /etc/hosts naming both nodes (bind mounts in a private mount
#                               namespace). DIR must not be under /tmp; paths under /tmp named
#                               in FER_CLUSTER_SHARE (space-separated: the build and the sources
#                               when a clone lives in /tmp) stay visible on both nodes (their
#                               top folder under /tmp is bind-mounted back into the node's /tmp).
#                               Writes DIR/hostfile (2 slots per node) and DIR/agent (Open MPI's
#                               rsh agent: enters the node's namespaces instead of ssh).
#   cluster.sh down DIR         kills every process in the nodes, removes the namespaces (and so
#                               the veth pair) by name; also what a crashed earlier run left.
#   cluster.sh exec DIR NODE CMD...  runs CMD on NODE (node1|node2, or its address).
#   cluster.sh agent DIR HOST CMD... the rsh agent: `sh -c "CMD..."` on HOST, as ssh would.
#   cluster.sh pids DIR NODE    "PID COMMAND" of every process on NODE (but the node's holder).
#   cluster.sh kill-node DIR NODE    the node dies: its link goes down first (no FIN or RST
#                               reaches the other node, as with a powered-off machine), then every
#                               process in it is SIGKILLed.
#   cluster.sh check            exit 0 when this machine can make such a cluster, else 77 with why.
#
# The namespaces are named fer<id>n1/n2, <id> from DIR's path: two build folders (two test runs)
# do not clash, and a rerun with the same DIR removes what the last one left. Needs root, ip(8),
# unshare(1), nsenter(1); `check` says what is missing.
set -euo pipefail

readonly kSkip=77  # CTest SKIP_RETURN_CODE: this machine cannot run the cluster tests
readonly kNodes=(node1 node2)
readonly kAddrs=(10.99.0.1 10.99.0.2)
readonly kHolderSeconds=3600  # a holder outlives a crashed test run by at most this

die() { echo "cluster.sh: $*" >&2; exit 1; }

# The netns names for DIR (absolute): fer<8 hex of its path>n1, ...n2.
ns_prefix() { echo "fer$(printf '%s' "$1" | md5sum | cut -c1-8)"; }

node_index() {  # node1|10.99.0.1|node1.<anything> -> 0; node2 -> 1
  case "$1" in
    node1 | node1.* | 10.99.0.1) echo 0 ;;
    node2 | node2.* | 10.99.0.2) echo 1 ;;
    *) die "unknown node '$1' (node1, node2, 10.99.0.1, 10.99.0.2)" ;;
  esac
}

check() {
  [[ $(id -u) -eq 0 ]] || { echo "cluster.sh: needs root (network namespaces, veth pairs)" >&2; exit $kSkip; }
  local b
  for b in ip unshare nsenter md5sum; do
    command -v "$b" >/dev/null || { echo "cluster.sh: $b not found" >&2; exit $kSkip; }
  done
  # A namespace and a veth pair, made and removed at once.
  local probe
  probe="fercheck$$"
  if ! ip netns add "$probe" 2>/dev/null; then
    echo "cluster.sh: cannot create a network namespace here (ip netns add failed)" >&2
    exit $kSkip
  fi
  if ! ip -n "$probe" link add "${probe}a" type veth peer name "${probe}b" 2>/dev/null; then
    ip netns del "$probe" 2>/dev/null || true
    echo "cluster.sh: cannot create a veth pair here" >&2
    exit $kSkip
  fi
  ip netns del "$probe"
  if ! unshare --uts --mount --propagation slave -- true 2>/dev/null; then
    echo "cluster.sh: cannot create UTS and mount namespaces here (unshare --uts --mount)" >&2
    exit $kSkip
  fi
}

# Every pid in network namespace NS (ip netns pids, or by /proc/*/ns/net when that fails).
ns_pids() {
  ip netns pids "$1" 2>/dev/null || true
}

kill_ns() {  # SIGKILL every process of netns NS, wait (bounded) until they are gone
  local ns=$1 pids
  for _ in $(seq 50); do
    pids=$(ns_pids "$ns")
    [[ -z "$pids" ]] && return 0
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.1
  done
  echo "cluster.sh: processes of $ns still there after SIGKILL: $(ns_pids "$ns")" >&2
}

down() {
  local dir=$1 prefix i ns
  prefix=$(ns_prefix "$dir")
  for i in 0 1; do
    ns="${prefix}n$((i + 1))"
    if [[ -e "/run/netns/$ns" ]]; then
      kill_ns "$ns"
      ip netns del "$ns" 2>/dev/null || echo "cluster.sh: could not remove netns $ns" >&2
    fi
    rm -rf "$dir/${kNodes[$i]}.pid" "$dir/tmp-${kNodes[$i]}" "$dir/host-tmp-${kNodes[$i]}"
  done
}

up() {
  local dir=$1 prefix i ns
  check
  case "$dir/" in
    /tmp/*) die "DIR ($dir) must not be under /tmp: each node has a /tmp of its own" ;;
  esac
  mkdir -p "$dir"
  down "$dir"  # what a crashed run with this DIR left
  # The top folders under /tmp of FER_CLUSTER_SHARE's paths: shown again in each node's /tmp.
  local share="" p top
  for p in ${FER_CLUSTER_SHARE:-}; do
    p=$(readlink -f "$p")
    case "$p/" in
      /tmp/?*) top=/tmp/$(cut -d/ -f3 <<<"$p")
               [[ " $share " == *" $top "* ]] || share="$share $top" ;;
    esac
  done
  prefix=$(ns_prefix "$dir")
  {
    echo "127.0.0.1 localhost"
    for i in 0 1; do echo "${kAddrs[$i]} ${kNodes[$i]}"; done
  } > "$dir/hosts"
  for i in 0 1; do
    ip netns add "${prefix}n$((i + 1))"
    rm -rf "$dir/tmp-${kNodes[$i]}"
    mkdir -p "$dir/tmp-${kNodes[$i]}"
    chmod 1777 "$dir/tmp-${kNodes[$i]}"
  done
  ip -n "${prefix}n1" link add veth-n1 type veth peer name veth-n2 netns "${prefix}n2"
  for i in 0 1; do
    ns="${prefix}n$((i + 1))"
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "${kAddrs[$i]}/24" dev "veth-n$((i + 1))"
    ip -n "$ns" link set "veth-n$((i + 1))" up
    # The holder: a UTS namespace with the node's hostname and a mount namespace (a copy of the
    # machine's, receiving its later mounts) with the cluster's /etc/hosts. Its pid is the node.
    # (Not `ip netns exec`: it mounts a sysfs of its own over /sys, which hides the cgroup file
    # systems slurmd wants.)
    # The machine's /tmp stays reachable at $6 (inside this namespace only) for the folders in
    # $7 to be bind-mounted back over the node's own /tmp.
    nsenter --net="/run/netns/$ns" -- unshare --uts --mount --propagation slave -- sh -c '
      hostname "$1" && mount --bind "$2" /etc/hosts &&
      { [ -z "$7" ] || { mkdir -p "$6" && mount --bind /tmp "$6"; }; } &&
      mount --bind "$5" /tmp &&
      for p in $7; do mkdir -p "$p" && mount --bind "$6${p#/tmp}" "$p" || exit 1; done &&
      echo $$ > "$3.tmp" && mv "$3.tmp" "$3" &&
      exec sleep "$4"' holder "${kNodes[$i]}" "$dir/hosts" "$dir/${kNodes[$i]}.pid" \
      "$kHolderSeconds" "$dir/tmp-${kNodes[$i]}" "$dir/host-tmp-${kNodes[$i]}" "$share" \
      </dev/null >/dev/null \
      2>"$dir/${kNodes[$i]}.holder.log" &
  done
  for i in 0 1; do
    for _ in $(seq 100); do [[ -s "$dir/${kNodes[$i]}.pid" ]] && break; sleep 0.05; done
    [[ -s "$dir/${kNodes[$i]}.pid" ]] ||
      die "node ${kNodes[$i]} did not come up: $(cat "$dir/${kNodes[$i]}.holder.log")"
  done
  printf '%s slots=2\n' "${kNodes[@]}" > "$dir/hostfile"
  cat > "$dir/agent" <<AGENT
#!/bin/sh
# Open MPI's rsh agent for the cluster in $dir: runs the command on the node (no ssh).
exec bash $(printf '%q' "$(readlink -f "$0")") agent $(printf '%q' "$dir") "\$@"
AGENT
  chmod +x "$dir/agent"
  # Both nodes up: their hostnames and the link between them.
  [[ $(node_exec "$dir" node1 hostname) == node1 ]] || die "node1 has the wrong hostname"
  [[ $(node_exec "$dir" node2 hostname) == node2 ]] || die "node2 has the wrong hostname"
  # (a closed port answers "refused" at once; no link: a timeout)
  local answer
  answer=$(node_exec "$dir" node1 timeout 5 bash -c 'exec 3<>/dev/tcp/node2/9' 2>&1 || true)
  [[ "$answer" == *refused* ]] || die "node1 cannot reach node2 over the veth pair: $answer"
}

node_exec() {  # node_exec DIR NODE CMD...: CMD in the node's namespaces, in this folder
  local dir=$1 node=$2 pid
  shift 2
  pid=$(cat "$dir/${kNodes[$(node_index "$node")]}.pid" 2>/dev/null) ||
    die "node $node is not up (no $dir/${kNodes[$(node_index "$node")]}.pid)"
  nsenter --target "$pid" --net --uts --mount --wd="$PWD" -- "$@"
}

kill_node() {
  local dir=$1 node=$2 i ns
  i=$(node_index "$node")
  ns="$(ns_prefix "$dir")n$((i + 1))"
  rm -f "$dir/${kNodes[$i]}.pid"  # first: the agent must know the node is gone
  ip -n "$ns" link set "veth-n$((i + 1))" down
  kill_ns "$ns"
}

cmd=${1:-}
case "$cmd" in
  check) check ;;
  up | down)
    [[ -n "${2:-}" ]] || die "usage: cluster.sh $cmd DIR"
    mkdir -p "$2"
    "$cmd" "$(cd "$2" && pwd)" ;;
  exec)
    (($# >= 4)) || die "usage: cluster.sh exec DIR NODE CMD..."
    dir=$(cd "$2" && pwd)
    node_exec "$dir" "$3" "${@:4}" ;;
  agent)
    # Open MPI runs `AGENT HOST CMD...`; the remote side runs CMD with a shell (as ssh does).
    (($# >= 4)) || die "usage: cluster.sh agent DIR HOST CMD..."
    dir=$2 host=$3
    shift 3
    rc=0
    node_exec "$dir" "$host" /bin/sh -c "$*" || rc=$?
    if ((rc > 128)) && [[ ! -e "$dir/${kNodes[$(node_index "$host")]}.pid" ]]; then
      # The node died (kill-node) under the command. An ssh client to a dead host hears nothing
      # and waits; so does this agent (until the launcher ends it, or `down`): mpirun must find
      # out by itself that the host is gone, as on a real cluster.
      exec sleep "$kHolderSeconds"
    fi
    exit "$rc" ;;
  pids)  # pids DIR NODE: "PID ARGS" of every process on NODE but its holder
    (($# == 3)) || die "usage: cluster.sh pids DIR NODE"
    dir=$(cd "$2" && pwd)
    i=$(node_index "$3")
    holder=$(cat "$dir/${kNodes[$i]}.pid" 2>/dev/null || echo none)
    for pid in $(ns_pids "$(ns_prefix "$dir")n$((i + 1))"); do
      [[ "$pid" == "$holder" ]] && continue
      args=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null) || continue
      echo "$pid $args"
    done ;;
  kill-node)
    (($# == 3)) || die "usage: cluster.sh kill-node DIR NODE"
    kill_node "$(cd "$2" && pwd)" "$3" ;;
  *) die "usage: cluster.sh check | up DIR | down DIR | exec DIR NODE CMD... | kill-node DIR NODE" ;;
esac
