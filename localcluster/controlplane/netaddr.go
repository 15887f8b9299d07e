package controlplane

import (
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The pods' addresses. Kubernetes refuses loopback addresses (127.0.0.0/8)
// in EndpointSlices (ValidateEndpointIP in pkg/apis/core/validation), and
// the endpointslice controller, the aggregator and the gateway all need
// EndpointSlices. So the cluster uses a range that is not loopback by name
// but is delivered like it: a "local" route for the whole range on the lo
// interface (what Linux calls AnyIP), the same mechanism that makes every
// 127.x.y.z address local. Packets to it never leave the machine. The range
// is 198.18.0.0/15's first /24, reserved for benchmarking (RFC 2544) and
// never routed on the internet.
const DefaultPodCIDR = "198.18.0.0/24"

// DefaultServiceCIDR holds the Services' cluster IPs, in the same reserved
// range and local the same way; the first address is the kubernetes
// Service's.
const DefaultServiceCIDR = "198.19.0.0/16"

// AddLocalRoute makes every address of cidr local (bindable, delivered on
// lo), and says whether it added the route (false: it was there already,
// left by a run that was killed, and is not ours to remove). It needs
// CAP_NET_ADMIN; the error says so.
func AddLocalRoute(cidr string) (bool, error) {
	route, err := localRoute(cidr)
	if err != nil {
		return false, err
	}
	if err := netlink.RouteAdd(route); err != nil {
		if errors.Is(err, syscall.EEXIST) {
			return false, nil
		}
		if errors.Is(err, syscall.EPERM) {
			return false, fmt.Errorf("adding the local route for the pod addresses %s needs root (CAP_NET_ADMIN): %w", cidr, err)
		}
		return false, fmt.Errorf("adding the local route for the pod addresses %s: %w", cidr, err)
	}
	return true, nil
}

// DelLocalRoute removes what AddLocalRoute added.
func DelLocalRoute(cidr string) error {
	route, err := localRoute(cidr)
	if err != nil {
		return err
	}
	if err := netlink.RouteDel(route); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("removing the local route for %s: %w", cidr, err)
	}
	return nil
}

func localRoute(cidr string) (*netlink.Route, error) {
	_, dst, err := net.ParseCIDR(cidr)
	if err != nil {
		return nil, fmt.Errorf("parsing the pod CIDR %q: %w", cidr, err)
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("finding the loopback interface: %w", err)
	}
	return &netlink.Route{
		LinkIndex: lo.Attrs().Index,
		Dst:       dst,
		Type:      unix.RTN_LOCAL,
		Table:     unix.RT_TABLE_LOCAL,
		Scope:     netlink.SCOPE_HOST,
		Protocol:  unix.RTPROT_STATIC,
	}, nil
}
