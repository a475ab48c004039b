// Package kernel holds the small netlink helpers that both the bridge
// driver (driver/) and the VXLAN data path (overlay/) need.
package kernel

import (
	"errors"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// LinkNotFound reports whether err says a link does not exist: netlink's own
// lookup error, or the kernel's ENODEV from a call on a vanished link.
func LinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}
