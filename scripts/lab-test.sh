#!/usr/bin/env bash
# lab-test.sh: the lab tests (tests/lab, build tag lab) from nothing to nothing:
# build them, `lab.sh down` (whatever lab is left), `lab.sh up`, the TestUp* tests, `lab.sh down` (also after a
# failure), then TestDown* (nothing of the lab is left, the main dockerd's
# plugin as it was). Prints how long each step took.
#   lab-test.sh main-plugin   print how the main dockerd's plugin stands now
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH=/usr/local/go/bin:$PATH

# main_plugin: the main dockerd's plugin (id and enabled), "absent", or
# "no dockerd": what the lab must leave as it found it.
main_plugin() {
	if ! env -u DOCKER_HOST docker info >/dev/null 2>&1; then
		echo "no dockerd"
	else
		env -u DOCKER_HOST docker plugin inspect -f '{{.Id}} {{.Enabled}}' "${VXBRIDGE_PLUGIN:-vxbridge:latest}" 2>/dev/null || echo absent
	fi
}
if [ "${1:-}" = main-plugin ]; then
	main_plugin
	exit 0
fi

cd "$repo" || exit 1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
report=()
# step NAME CMD...: run CMD, note its time and outcome.
step() {
	local name=$1 t0 rc
	shift
	echo "=== lab-test: $name"
	t0=$(date +%s%N)
	"$@"
	rc=$?
	report+=("$(printf '%-14s %s in %d.%01d s' "$name" "$([ $rc -eq 0 ] && echo ok || echo FAILED)" \
		$((($(date +%s%N) - t0) / 1000000000)) $((($(date +%s%N) - t0) / 100000000 % 10)))")
	return $rc
}
# logs: what the lab's daemons said last (the plugin writes into dockerd's log).
logs() {
	local f
	for f in "${VXLAB_ROOT:-/tmp/vxlab}"/logs/*.log; do
		[ -f "$f" ] || continue
		echo "--- last lines of $f ---"
		tail -n 25 "$f"
	done
}

# tests PATTERN: the lab tests matching PATTERN (they read `lab.sh env` from their folder).
tests() { (cd tests/lab && "$tmp/lab.test" -test.count=1 -test.v -test.run "$1"); }

export VXLAB_MAIN_PLUGIN
VXLAB_MAIN_PLUGIN=$(main_plugin)
rc=0
step "build tests" go test -tags lab -c -o "$tmp/lab.test" ./tests/lab || rc=1
if [ $rc -eq 0 ]; then
	# From nothing: a lab left up (or its namespaces, after a reboot or a
	# killed session) would keep the plugin it was made with, not this tree's.
	step "old lab down" bash scripts/lab.sh down >/dev/null 2>&1 || rc=1
	step "lab up" bash scripts/lab.sh up >/dev/null || rc=1
	[ $rc -ne 0 ] || step "lab tests" tests '^TestUp' || rc=1
	[ $rc -eq 0 ] || logs
	step "lab down" bash scripts/lab.sh down || rc=1
	step "nothing left" tests '^TestDown' || rc=1
fi
echo "=== lab-test: times"
printf '  %s\n' "${report[@]}"
[ $rc -eq 0 ] && echo "lab-test: ok" || echo "lab-test: FAILED"
exit $rc
