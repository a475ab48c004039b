#!/usr/bin/env bash
# fuzz.sh [FUZZTIME]: run every Fuzz* target of the module, one at a time
# (go test -fuzz accepts a single target in a single package), each for FUZZTIME.
set -euo pipefail

fuzztime=${1:-${FUZZTIME:-30s}}
cd "$(dirname "${BASH_SOURCE[0]}")/.."

count=0
# Only packages that have test files can hold fuzz targets.
for pkg in $(go list -f '{{if or .TestGoFiles .XTestGoFiles}}{{.ImportPath}}{{end}}' ./...); do
	for target in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
		echo "fuzz.sh: $pkg $target for $fuzztime"
		go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg"
		count=$((count + 1))
	done
done
echo "fuzz.sh: ran $count fuzz target(s)"
