#!/usr/bin/env bash
# uninstall-plugin.sh: remove the vxbridge managed plugin if it is installed.
# /var/lib/vxbridge (the state DB) is kept on purpose: a later install picks it up.
set -euo pipefail

plugin=${VXBRIDGE_PLUGIN:-vxbridge:latest}

docker info >/dev/null 2>&1 || { echo "uninstall-plugin.sh: dockerd does not answer" >&2; exit 1; }
if docker plugin inspect "$plugin" >/dev/null 2>&1; then
	docker plugin disable -f "$plugin" >/dev/null 2>&1 || true
	docker plugin rm -f "$plugin" >/dev/null
	# The resolver's addresses (driver/resolver.go) outlive the plugin's
	# stops on purpose, not its removal.
	ip addr del 169.254.53.53/32 dev lo 2>/dev/null || true
	ip addr del fd53:7862:7264::53/128 dev lo 2>/dev/null || true
	echo "uninstall-plugin.sh: removed $plugin; state kept in /var/lib/vxbridge (delete it by hand to start afresh)"
else
	echo "uninstall-plugin.sh: $plugin not installed"
fi
