// Command vxbridge is a Docker network and IPAM plugin: Linux bridges on one
// host, with state that survives restarts.
//
//	vxbridge serve   run the plugin (managed plugin entrypoint, or a plain daemon)
//	vxbridge state   print what a running plugin holds
//	vxbridge ports   list published ports (docker ps cannot show a remote driver's)
//	vxbridge reconcile  clean up now what dockerd removed while the plugin was down
//	vxbridge ls, peers, doctor, forget-host  operator commands
//
// The daemon is in daemon.go (multihost.go for the cluster), the commands
// that ask it over its socket in cli.go and cli_ops.go, what they exchange
// in answers.go.
package main

import (
	"fmt"
	"os"
)

// pluginDir is where dockerd looks for legacy plugin sockets; a managed
// plugin sees its own private folder mounted at the same path.
const pluginDir = "/run/docker/plugins"

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "state":
		err = state(os.Args[2:])
	case "ports":
		err = ports(os.Args[2:])
	case "reconcile":
		err = reconcileNow(os.Args[2:])
	default:
		cmd, ok := opsCommands[os.Args[1]]
		if !ok {
			usage()
		}
		err = cmd(os.Args[2:])
	}
	exit(err)
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: vxbridge serve|state|ports|reconcile|ls|peers|doctor|forget-host [flags] [args]  (-h for flags)")
	os.Exit(2)
}

func env(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
