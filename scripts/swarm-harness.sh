#!/usr/bin/env bash
# A multi-node Docker Swarm on one machine, for integration tests and
# benchmarks. Run as root.
#
#   swarm-harness.sh up NAME N [--image IMG]... [--label nI:KEY=VALUE]...
#                    [--subnet A.B.C.0/24] [--heartbeat DURATION] [--gvisor I]... [--tls]
#       Builds a swarm of N nodes (1 <= N <= 99): node 1 is the manager
#       (swarm init), nodes 2..N join it as workers. NAME is [a-z0-9]{1,8}
#       and must not exist yet; harnesses with different names coexist and
#       may be built concurrently.
#         --image IMG      copied from the host engine into every node
#                          (docker save | docker load); repeatable
#         --label nI:K=V   `docker node update --label-add K=V` on node I once
#                          all nodes are Ready; repeatable
#         --subnet         the nodes' link (default 10.251.K.0/24, K from a
#                          hash of NAME, moved on if that /24 is taken);
#                          bridge = .1 on the host, node I = .(10+I)
#         --tls            every engine also listens on tcp://ADDRESS:2376 with
#                          TLS, verifying clients: a CA, each node's server
#                          certificate (its address as IP SAN) and one client
#                          certificate are made in /run/sp-swarm/NAME/tls/
#                          (ca.pem, client-cert.pem, client-key.pem)
#         --gvisor I       node I's engine runs every container under gVisor
#                          (runsc registered as its default runtime); repeatable
#         --heartbeat D    swarm init --dispatcher-heartbeat D (default: the
#                          engine's, 5s; a node is marked Down after about
#                          3 heartbeats without news)
#       On success prints one line per node on stdout, nothing else:
#         node I SOCKET NODE_ID HOSTNAME ADDRESS
#       (SOCKET is a path: use `docker -H unix://SOCKET`; the same lines are
#       kept in /run/sp-swarm/NAME/nodes). Progress goes to stderr. On failure
#       it tears down what it built and exits nonzero.
#   swarm-harness.sh down NAME
#       Removes everything `up NAME` made, whatever state it is in.
#       Idempotent; succeeds for a name that never existed.
#   swarm-harness.sh kill NAME I
#       Cuts node I's link (host-side veth down) and SIGKILLs every process
#       of the node (dockerd, containerd, shims, containers), so the manager
#       sees it as lost. `down NAME` still cleans it up.
#   swarm-harness.sh list
#       Prints the names of the harnesses that exist, whole or in part.
#       Each records its owner's pid in /run/sp-swarm/NAME/owner (written
#       first thing by `up`: SP_SWARM_OWNER, or the caller's pid), so that a
#       test run can sweep those whose owner is gone and no others.
#
# How a node is made: an extra dockerd in a network namespace of its own
# (nsenter --net; NOT `ip netns exec`, which remounts /sys and hides the
# cgroup hierarchy from dockerd) and a UTS namespace of its own (so swarm sees
# hostname NAME-nI), with its own --data-root, --exec-root, --pidfile, unix
# socket, --cgroup-parent and config file, hence its own supervised
# containerd. Nodes are joined by a Linux bridge on the host. Two FORWARD
# rules (tagged with a comment) let node-to-node traffic through the host's
# DROP policy and REJECT whatever else the nodes send past the host, so that
# lookups and pulls fail at once instead of timing out. dockerd runs with
# DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1: a swarm task uses the node's copy
# of its image without asking a registry first. Swarm overlays take their
# subnets from 10.252.0.0/16 (the same in every harness: swarms are apart).
#
# Limits seen on a kernel without ip_vs: a service's virtual IP does not
# answer; reach tasks by their addresses (tasks.SERVICE, --endpoint-mode
# dnsrr). `docker service create` without --no-resolve-image asks a registry
# for the digest first, which costs about 5 s here.
#
# Names (NAME <= 8 chars, I <= 2 digits, interface names <= 15 chars):
#   /run/sp-swarm/NAME/nI.sock, nI.pid, nI.log, nI.json  socket, pidfile, log, config
#   /run/sp-swarm/NAME/nI/              exec-root (containerd, shims, netns)
#   /var/lib/sp-swarm/NAME/nI/          data-root
#   netns spsw-NAME-nI, bridge spsw-NAME, host-side veth spv-NAME-I
#   cgroups /sys/fs/cgroup/*/sp-swarm-NAME-nI, iptables comment sp-swarm-NAME
#
# Environment: SP_SWARM_STORAGE_DRIVER forces the nodes' storage driver
# (default: overlay2 if an overlay mount works under /var/lib/sp-swarm,
# else vfs).
set -euo pipefail

readonly RUN_BASE=/run/sp-swarm
readonly LIB_BASE=/var/lib/sp-swarm
readonly CGROOT=/sys/fs/cgroup
readonly ADDR_POOL=10.252.0.0/16
readonly START_TIMEOUT=60 # seconds for a dockerd to answer
readonly READY_TIMEOUT=60 # seconds for all nodes to be Ready

NAME=""
T0=$SECONDS

# ---------------------------------------------------------------- helpers

log() { printf '[swarm-harness %s +%ss] %s\n' "${NAME:-}" "$((SECONDS - T0))" "$*" >&2; }
die() {
	printf 'swarm-harness: error: %s\n' "$*" >&2
	exit 1
}
usage() {
	sed -n '2,34s/^# \{0,1\}//p' "$0" >&2
	exit 2
}

check_name() {
	[[ $1 =~ ^[a-z0-9]{1,8}$ ]] || die "bad harness name '$1' (want [a-z0-9]{1,8})"
}

# Per-harness and per-node names.
run_dir() { echo "$RUN_BASE/$NAME"; }
lib_dir() { echo "$LIB_BASE/$NAME"; }
bridge() { echo "spsw-$NAME"; }
comment() { echo "sp-swarm-$NAME"; }
node_ns() { echo "spsw-$NAME-n$1"; }
node_veth() { echo "spv-$NAME-$1"; }
node_sock() { echo "$RUN_BASE/$NAME/n$1.sock"; }
node_pidfile() { echo "$RUN_BASE/$NAME/n$1.pid"; }
node_log() { echo "$RUN_BASE/$NAME/n$1.log"; }
node_conf() { echo "$RUN_BASE/$NAME/n$1.json"; }
node_exec_root() { echo "$RUN_BASE/$NAME/n$1"; }
node_data_root() { echo "$LIB_BASE/$NAME/n$1"; }
node_cgroup() { echo "sp-swarm-$NAME-n$1"; }
node_hostname() { echo "$NAME-n$1"; }

# docker CLI on node I.
nd() {
	local i=$1
	shift
	docker -H "unix://$(node_sock "$i")" "$@"
}

# wait_for TIMEOUT WHAT CMD...: polls CMD every 0.1 s until it succeeds.
wait_for() {
	local timeout=$1 what=$2
	shift 2
	local deadline=$((SECONDS + timeout))
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || die "timed out after ${timeout}s waiting for $what"
		sleep 0.1
	done
}

# ---------------------------------------------------------------- discovery

# Names of every harness of which anything is left.
all_names() {
	{
		local d
		for d in "$RUN_BASE"/* "$LIB_BASE"/*; do
			if [ -d "$d" ]; then basename "$d"; fi
		done
		ip netns list 2>/dev/null | sed -nE 's/^spsw-([a-z0-9]{1,8})-n[0-9]+( .*)?$/\1/p'
		ip -o link show 2>/dev/null |
			sed -nE 's/^[0-9]+: (spsw-([a-z0-9]{1,8})|spv-([a-z0-9]{1,8})-[0-9]+)[@:].*/\2\3/p'
		local t
		for t in filter nat mangle raw; do
			iptables -w -t "$t" -S 2>/dev/null |
				sed -nE 's/.*--comment "?sp-swarm-([a-z0-9]{1,8})"?( .*)?$/\1/p'
		done
		for d in "$CGROOT"/*/sp-swarm-*-n*; do
			if [ -d "$d" ]; then basename "$d" | sed -nE 's/^sp-swarm-([a-z0-9]{1,8})-n[0-9]+$/\1/p'; fi
		done
	} | { grep -E '^[a-z0-9]{1,8}$' || true; } | sort -u
}

# Pids of processes that belong to this harness (or to node I if given):
# pidfiles, command lines naming its directories, processes in its network
# namespaces, and tasks in its cgroups. Never our own process or ancestors.
harness_pids() {
	local i=${1:-} pattern ns_glob cg_glob pidfiles
	if [ -n "$i" ]; then
		# n1 must not match n10: the path ends, or goes on with '/' or '.'.
		pattern="^(.*=)?($RUN_BASE|$LIB_BASE)/$NAME/n$i([/.].*)?\$"
		ns_glob=$(node_ns "$i")
		cg_glob=$(node_cgroup "$i")
		pidfiles=$(node_pidfile "$i")
	else
		pattern="^(.*=)?($RUN_BASE|$LIB_BASE)/$NAME(/.*)?\$"
		ns_glob="spsw-$NAME-n*"
		cg_glob="sp-swarm-$NAME-n*"
		pidfiles="$RUN_BASE/$NAME/n*.pid"
	fi
	{
		local f p ns cg
		# shellcheck disable=SC2086 # globs on purpose
		for f in $pidfiles; do
			[ -f "$f" ] || continue
			p=$(cat "$f" 2>/dev/null) || continue
			# Only if that pid is still a process of ours (pids get reused).
			[[ $p =~ ^[0-9]+$ ]] && tr '\0' '\n' 2>/dev/null <"/proc/$p/cmdline" |
				grep -qE "$pattern" && echo "$p"
		done
		# Each argument is a NUL-terminated "line" for grep -z.
		grep -lszE "$pattern" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3 || true
		while read -r ns _; do
			# shellcheck disable=SC2053 # glob match on purpose
			[[ $ns == $ns_glob ]] && ip netns pids "$ns" 2>/dev/null
		done < <(ip netns list 2>/dev/null)
		# shellcheck disable=SC2231 # $cg_glob is a glob on purpose
		for cg in "$CGROOT"/*/$cg_glob; do
			[ -d "$cg" ] && find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null
		done
	} | grep -E '^[0-9]+$' | sort -un | grep -vxF -f <(self_and_ancestors) || true
}

self_and_ancestors() {
	local p=$BASHPID
	echo "$$"
	while [ -n "$p" ] && [ "$p" -gt 1 ]; do
		echo "$p"
		p=$(awk '/^PPid:/ {print $2}' "/proc/$p/status" 2>/dev/null) || break
	done
}

# SIGKILL the harness's (or node I's) processes until none is left, then
# remove the sockets their containerd shims leave in /run/containerd/s.
kill_procs() {
	local i=${1:-} pids sockets _
	sockets=$(shim_sockets "$i")
	for _ in $(seq 1 100); do
		pids=$(harness_pids "$i")
		if [ -z "$pids" ]; then
			# shellcheck disable=SC2086
			[ -z "$sockets" ] || rm -f $sockets
			return 0
		fi
		# shellcheck disable=SC2086
		kill -9 $pids 2>/dev/null || true
		sleep 0.05
	done
	die "processes still alive after 100 rounds of SIGKILL: $(harness_pids "$i" | tr '\n' ' ')"
}

# containerd (1.6) puts shim sockets in /run/containerd/s/<sha256>, whatever
# the exec-root; a shim killed by SIGKILL leaves its socket. Ours are those
# bound in the nodes' network namespaces.
shim_sockets() {
	local i=${1:-} ns p want="*"
	[ -z "$i" ] || want=$i
	while read -r ns _; do
		# shellcheck disable=SC2053 # $want may be a glob
		[[ $ns == spsw-"$NAME"-n$want ]] || continue
		p=$(ip netns pids "$ns" 2>/dev/null | head -n1)
		[ -z "$p" ] || awk '$8 ~ /^\/run\/containerd\/s\/[0-9a-f]+$/ { print $8 }' "/proc/$p/net/unix" 2>/dev/null
	done < <(ip netns list 2>/dev/null)
	return 0
}

# Mount points under the harness's directories, deepest first.
harness_mounts() {
	awk -v a="$RUN_BASE/$NAME" -v b="$LIB_BASE/$NAME" '
		{ m = $5; gsub(/\\040/, " ", m)
		  if (m == a || index(m, a "/") == 1 || m == b || index(m, b "/") == 1)
			print length(m) "\t" m }' /proc/self/mountinfo | sort -rn | cut -f2-
}

# ---------------------------------------------------------------- teardown

teardown() {
	local name=$NAME ns link cg left _

	kill_procs ""

	# Container rootfs, shm, netns bind mounts, the overlay2 private bind.
	for _ in $(seq 1 20); do
		left=$(harness_mounts)
		[ -z "$left" ] && break
		while IFS= read -r m; do
			umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
		done <<<"$left"
	done
	[ -z "$(harness_mounts)" ] || die "mounts left under $RUN_BASE/$name or $LIB_BASE/$name: $(harness_mounts | tr '\n' ' ')"

	while read -r ns _; do
		if [[ $ns == spsw-"$name"-n* ]]; then ip netns del "$ns" 2>/dev/null || true; fi
	done < <(ip netns list 2>/dev/null)
	for link in $(ip -o link show 2>/dev/null | sed -nE 's/^[0-9]+: ([^:@]+)[@:].*/\1/p'); do
		if [[ $link == "spv-$name-"* || $link == "spsw-$name" ]]; then
			ip link del "$link" 2>/dev/null || true
		fi
	done

	delete_rules

	# Cgroups the nodes' engines created (children first); tasks may take a
	# moment to leave after SIGKILL.
	for _ in $(seq 1 50); do
		left=""
		for cg in "$CGROOT"/*/sp-swarm-"$name"-n*; do
			[ -d "$cg" ] || continue
			find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
			[ -d "$cg" ] && left+="$cg "
		done
		[ -z "$left" ] && break
		sleep 0.1
	done
	[ -z "$left" ] || die "cgroups left: $left"

	rm -rf --one-file-system "${RUN_BASE:?}/${name:?}" "${LIB_BASE:?}/${name:?}"
}

# Delete the iptables rules tagged with this harness's comment, all tables.
delete_rules() {
	local t line
	local -a args
	for t in filter nat mangle raw; do
		while IFS= read -r line; do
			read -ra args <<<"${line/#-A /-D }"
			iptables -w -t "$t" "${args[@]}" 2>/dev/null || true
		done < <(iptables -w -t "$t" -S 2>/dev/null | grep -E -- "--comment \"?$(comment)\"?( |\$)" || true)
	done
}

# ---------------------------------------------------------------- up

# Chooses the nodes' /24, makes the bridge and the FORWARD rule. Under a
# global lock so that concurrent `up`s pick different subnets.
make_link() {
	local want=$1 prefix k tries
	exec 9>"$RUN_BASE/.lock"
	flock 9
	if [ -n "$want" ]; then
		[[ $want =~ ^([0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})\.0/24$ ]] || die "--subnet must be A.B.C.0/24, got '$want'"
		prefix=${BASH_REMATCH[1]}
		subnet_free "$prefix" || die "subnet $want is already in use (routes or another harness)"
	else
		k=$(($(cksum <<<"$NAME" | cut -d' ' -f1) % 256))
		for tries in $(seq 0 256); do
			((tries < 256)) || die "no free /24 left in 10.251.0.0/16"
			prefix=10.251.$(((k + tries) % 256))
			subnet_free "$prefix" && break
		done
	fi
	echo "$prefix" >"$(run_dir)/subnet"
	ip link add "$(bridge)" type bridge
	ip addr add "$prefix.1/24" dev "$(bridge)"
	ip link set "$(bridge)" up
	# Bridged frames between the nodes go through the host's FORWARD chain
	# (br_netfilter), whose policy Docker set to DROP: accept node to node.
	# Anything else the nodes send past the host is rejected, so that their
	# lookups and pulls fail at once instead of timing out (20 s a DNS query).
	iptables -w -I FORWARD -i "$(bridge)" -m comment --comment "$(comment)" -j REJECT
	iptables -w -I FORWARD -i "$(bridge)" -o "$(bridge)" -m comment --comment "$(comment)" -j ACCEPT
	flock -u 9
	exec 9>&-
	SUBNET_PREFIX=$prefix
}

# True if nothing routes into or covers A.B.C.0/24 (other than the default
# route) and no harness recorded it.
subnet_free() {
	local prefix=$1
	[ -z "$(ip -4 route show root "$prefix.0/24")" ] || return 1
	! ip -4 route show match "$prefix.0/24" | grep -qv '^default' || return 1
	! grep -qxF "$prefix" "$RUN_BASE"/*/subnet 2>/dev/null
}

# overlay2 if an overlay mount works on the data-root's filesystem, else vfs.
pick_storage_driver() {
	if [ -n "${SP_SWARM_STORAGE_DRIVER:-}" ]; then
		echo "$SP_SWARM_STORAGE_DRIVER"
		return
	fi
	local p
	p="$(lib_dir)/.probe"
	mkdir -p "$p"/{l,u,w,m}
	if mount -t overlay overlay -o "lowerdir=$p/l,upperdir=$p/u,workdir=$p/w" "$p/m" 2>/dev/null; then
		umount "$p/m"
		echo overlay2
	else
		echo vfs
	fi
	rm -rf "$p"
}

make_node_net() {
	local i=$1 ns veth
	ns=$(node_ns "$i")
	veth=$(node_veth "$i")
	ip netns add "$ns"
	ip link add "$veth" type veth peer name eth0 netns "$ns"
	ip link set "$veth" master "$(bridge)" up
	ip -n "$ns" link set lo up
	ip -n "$ns" addr add "$(node_addr "$i")/24" dev eth0
	ip -n "$ns" link set eth0 up
	ip -n "$ns" route add default via "$SUBNET_PREFIX.1"
}

node_addr() { echo "$SUBNET_PREFIX.$((10 + $1))"; }

# A CA, a server certificate for each of N nodes (its address as IP SAN)
# and one client certificate, in $(run_dir)/tls: P-256 keys, valid 2 days.
make_tls() {
	local n=$1 t i
	command -v openssl >/dev/null || die "--tls needs openssl (apt-get install openssl)"
	t="$(run_dir)/tls"
	mkdir -p "$t"
	chmod 700 "$t"
	local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
	openssl req -x509 "${ec[@]}" -keyout "$t/ca-key.pem" -out "$t/ca.pem" -days 2 \
		-subj "/CN=sp-swarm $NAME CA" 2>/dev/null
	sign() { # name subject extensions
		openssl req "${ec[@]}" -keyout "$t/$1-key.pem" -out "$t/$1.csr" -subj "$2" 2>/dev/null
		openssl x509 -req -in "$t/$1.csr" -CA "$t/ca.pem" -CAkey "$t/ca-key.pem" -CAcreateserial \
			-out "$t/$1-cert.pem" -days 2 -extfile <(printf '%b' "$3") 2>/dev/null
		rm -f "$t/$1.csr"
	}
	for ((i = 1; i <= n; i++)); do
		sign "n$i" "/CN=$(node_hostname "$i")" "subjectAltName=IP:$(node_addr "$i")\nextendedKeyUsage=serverAuth"
	done
	sign client "/CN=sandpit" "extendedKeyUsage=clientAuth"
}

# Starts node I's dockerd detached, in the node's netns and a new UTS
# namespace named NAME-nI, with the host's mount namespace (/sys/fs/cgroup).
start_dockerd() {
	local i=$1 dr
	local -a tls_args=()
	if [ "${TLS:-0}" = 1 ]; then
		local t
		t="$(run_dir)/tls"
		tls_args=(--host "tcp://$(node_addr "$i"):2376" --tlsverify --tlscacert "$t/ca.pem"
			--tlscert "$t/n$i-cert.pem" --tlskey "$t/n$i-key.pem")
	fi
	dr=$(node_data_root "$i")
	mkdir -p "$(node_exec_root "$i")" "$dr"
	# Own config file: the host's /etc/docker/daemon.json must not apply,
	# and the engine key (engine ID) must not be the host's.
	if [[ " ${GVISOR_NODES:-} " == *" $i "* ]]; then
		# gVisor as the engine's default runtime: every container of this node runs under runsc.
		printf '{ "deprecated-key-path": "%s/key.json", "runtimes": { "runsc": { "path": "%s", "runtimeArgs": ["--network=none"] } }, "default-runtime": "runsc" }\n' \
			"$dr" "$(command -v runsc)" >"$(node_conf "$i")"
	else
		printf '{ "deprecated-key-path": "%s/key.json" }\n' "$dr" >"$(node_conf "$i")"
	fi
	# DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1: a swarm task uses the image the
	# node has instead of trying a registry first (nodes have no internet).
	# shellcheck disable=SC2016 # $1 and $@ are the inner shell's
	DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 setsid nsenter --net="/run/netns/$(node_ns "$i")" -- unshare --uts -- \
		sh -c 'echo "$1" >/proc/sys/kernel/hostname && shift && exec "$@"' sh "$(node_hostname "$i")" \
		dockerd \
		--config-file "$(node_conf "$i")" \
		--data-root "$dr" \
		--exec-root "$(node_exec_root "$i")" \
		--pidfile "$(node_pidfile "$i")" \
		--host "unix://$(node_sock "$i")" \
		--cgroup-parent "/$(node_cgroup "$i")" \
		--storage-driver "$STORAGE_DRIVER" \
		"${tls_args[@]}" \
		</dev/null >"$(node_log "$i")" 2>&1 &
	DOCKERD_PID[i]=$!
}

# Waits until node I's engine answers; fails fast if its dockerd died.
wait_dockerd() {
	local i=$1 deadline=$((SECONDS + START_TIMEOUT))
	until curl -sf --unix-socket "$(node_sock "$i")" http://d/_ping >/dev/null 2>&1; do
		if ! kill -0 "${DOCKERD_PID[i]}" 2>/dev/null; then
			tail -n 20 "$(node_log "$i")" >&2 || true
			die "dockerd of node $i exited (log: $(node_log "$i"))"
		fi
		((SECONDS < deadline)) || die "dockerd of node $i did not answer within ${START_TIMEOUT}s (log: $(node_log "$i"))"
		sleep 0.1
	done
	local driver
	driver=$(nd "$i" info --format '{{.Driver}}')
	[ "$driver" = "$STORAGE_DRIVER" ] || die "node $i uses storage driver '$driver', not '$STORAGE_DRIVER'"
	# The node must run a containerd of its own, not a system one.
	pids_with_arg "$(node_exec_root "$i")/containerd/containerd.toml" | grep -q . ||
		die "node $i has no containerd of its own under $(node_exec_root "$i") (is /run/containerd/containerd.sock a system containerd?)"
}

# Pids of the processes one of whose arguments is exactly $1.
pids_with_arg() {
	grep -lszxF -e "$1" /proc/[0-9]*/cmdline | cut -d/ -f3 || true
}

nodes_ready() {
	[ "$(nd 1 node ls --format '{{.Status}}' | grep -c '^Ready$')" -eq "$1" ]
}

on_up_exit() {
	local rc=$?
	[ "${UP_OK:-0}" = 1 ] && return 0
	((rc != 0)) || rc=1
	trap - EXIT INT TERM
	log "up failed (exit $rc); tearing down"
	local j
	for j in $(jobs -p); do
		disown "$j" 2>/dev/null || true # no "Killed" notices
		kill -9 "$j" 2>/dev/null || true
	done
	(teardown) || log "teardown after failure failed too; run: $0 down $NAME"
	exit "$rc"
}

cmd_up() {
	[ $# -ge 2 ] || usage
	NAME=$1
	local n=$2
	shift 2
	check_name "$NAME"
	if ! [[ $n =~ ^[0-9]{1,2}$ ]] || ((10#$n < 1)); then die "N must be 1..99, got '$n'"; fi
	n=$((10#$n))
	local -a images=() labels=()
	local subnet="" heartbeat=""
	while [ $# -gt 0 ]; do
		case $1 in
		--image) [ $# -ge 2 ] || usage; images+=("$2"); shift 2 ;;
		--label) [ $# -ge 2 ] || usage; labels+=("$2"); shift 2 ;;
		--subnet) [ $# -ge 2 ] || usage; subnet=$2; shift 2 ;;
		--heartbeat) [ $# -ge 2 ] || usage; heartbeat=$2; shift 2 ;;
		--tls) TLS=1; shift ;;
		--gvisor) [ $# -ge 2 ] || usage; [[ $2 =~ ^[1-9][0-9]?$ ]] || die "bad --gvisor '$2' (want a node number)"
			command -v runsc >/dev/null || die "--gvisor needs runsc (apt-get install runsc)"
			GVISOR_NODES="${GVISOR_NODES:-} $2"; shift 2 ;;
		*) usage ;;
		esac
	done
	local l
	for l in "${labels[@]}"; do
		if ! [[ $l =~ ^n([1-9][0-9]?):[^=]+=.*$ ]] || ((10#${BASH_REMATCH[1]} < 1 || 10#${BASH_REMATCH[1]} > n)); then
			die "bad --label '$l' (want nI:KEY=VALUE with 1 <= I <= $n)"
		fi
	done
	local img
	for img in "${images[@]}"; do
		docker image inspect "$img" >/dev/null 2>&1 || die "image '$img' not found on the host engine"
	done

	# Claim the name (mkdir is atomic), refusing leftovers of an earlier one.
	mkdir -p "$RUN_BASE" "$LIB_BASE"
	if all_names | grep -qxF "$NAME" || ! mkdir "$(run_dir)" 2>/dev/null; then
		die "harness '$NAME' exists (run: $0 down $NAME)"
	fi
	# Who owns it, for sweeps of harnesses whose owner died (SP_SWARM_OWNER:
	# a pid; default this script's parent).
	echo "${SP_SWARM_OWNER:-$PPID}" >"$(run_dir)/owner"
	UP_OK=0
	trap on_up_exit EXIT
	trap 'exit 130' INT TERM
	mkdir -p "$(lib_dir)"

	make_link "$subnet"
	STORAGE_DRIVER=$(pick_storage_driver)
	log "subnet $SUBNET_PREFIX.0/24 on bridge $(bridge), storage driver $STORAGE_DRIVER"

	local i
	[ "${TLS:-0}" = 1 ] && make_tls "$n"
	declare -ga DOCKERD_PID=()
	for ((i = 1; i <= n; i++)); do
		make_node_net "$i"
		start_dockerd "$i"
	done

	# Meanwhile, save the images once.
	local tar save_pid=""
	tar="$(lib_dir)/images.tar"
	if [ ${#images[@]} -gt 0 ]; then
		docker save -o "$tar" "${images[@]}" &
		save_pid=$!
	fi

	for ((i = 1; i <= n; i++)); do wait_dockerd "$i"; done
	log "$n engines up"

	# Load the images on every node while the swarm forms.
	local -a load_pids=()
	if [ -n "$save_pid" ]; then
		wait "$save_pid" || die "docker save ${images[*]} failed"
		for ((i = 1; i <= n; i++)); do
			nd "$i" load -q -i "$tar" >/dev/null &
			load_pids[i]=$!
		done
	fi

	nd 1 swarm init \
		--advertise-addr "$(node_addr 1)" --listen-addr "$(node_addr 1):2377" \
		--default-addr-pool "$ADDR_POOL" --default-addr-pool-mask-length 24 \
		${heartbeat:+--dispatcher-heartbeat "$heartbeat"} >/dev/null
	local token
	token=$(nd 1 swarm join-token -q worker)
	local -a join_pids=()
	for ((i = 2; i <= n; i++)); do
		nd "$i" swarm join --token "$token" \
			--advertise-addr "$(node_addr "$i")" --listen-addr "$(node_addr "$i"):2377" \
			"$(node_addr 1):2377" >/dev/null &
		join_pids[i]=$!
	done
	for ((i = 2; i <= n; i++)); do
		wait "${join_pids[i]}" || die "node $i failed to join (log: $(node_log "$i"))"
	done
	wait_for "$READY_TIMEOUT" "$n nodes Ready" nodes_ready "$n"
	log "swarm of $n nodes Ready"

	for ((i = 1; i <= n; i++)); do
		[ -z "${load_pids[i]:-}" ] || wait "${load_pids[i]}" || die "docker load on node $i failed"
	done
	rm -f "$tar"
	[ ${#images[@]} -eq 0 ] || log "images loaded: ${images[*]}"

	# Node ids, hostnames as swarm sees them, labels.
	local -a ids=()
	local id out=""
	for ((i = 1; i <= n; i++)); do
		ids[i]=$(nd "$i" info --format '{{.Swarm.NodeID}}')
		[ -n "${ids[i]}" ] || die "node $i has no swarm node ID"
	done
	for ((i = 1; i <= n; i++)); do
		local -a add=()
		for l in "${labels[@]}"; do
			[[ $l == "n$i:"* ]] && add+=(--label-add "${l#*:}")
		done
		[ ${#add[@]} -eq 0 ] || nd 1 node update "${add[@]}" "${ids[i]}" >/dev/null
	done
	for ((i = 1; i <= n; i++)); do
		id=${ids[i]}
		out+="node $i $(node_sock "$i") $id $(nd 1 node inspect --format '{{.Description.Hostname}}' "$id") $(node_addr "$i")"$'\n'
	done
	printf '%s' "$out" >"$(run_dir)/nodes"
	UP_OK=1
	trap - EXIT INT TERM
	log "done"
	printf '%s' "$out"
}

# ---------------------------------------------------------------- commands

cmd_down() {
	[ $# -eq 1 ] || usage
	NAME=$1
	check_name "$NAME"
	teardown
	log "down"
}

cmd_kill() {
	[ $# -eq 2 ] || usage
	NAME=$1
	check_name "$NAME"
	local i=$2
	[[ $i =~ ^[0-9]+$ ]] || die "bad node index '$i'"
	# Link first, so the peers get no FIN/RST from the dying processes: the
	# manager must find out by missed heartbeats, as for a lost machine.
	ip link set "$(node_veth "$i")" down 2>/dev/null || log "no link $(node_veth "$i")"
	kill_procs "$i"
	log "node $i killed"
}

main() {
	[ "$(id -u)" -eq 0 ] || die "run as root"
	local c
	for c in docker dockerd nsenter unshare setsid ip iptables flock curl; do
		command -v "$c" >/dev/null || die "$c not found"
	done
	[ $# -ge 1 ] || usage
	local cmd=$1
	shift
	case $cmd in
	up) cmd_up "$@" ;;
	down) cmd_down "$@" ;;
	kill) cmd_kill "$@" ;;
	list) [ $# -eq 0 ] || usage; all_names ;;
	*) usage ;;
	esac
}

main "$@"
