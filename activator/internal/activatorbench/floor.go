package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/mlscale/mlscale/internal/cgroup"
)

// serveTCPCopy is the floor any user-space proxy stands on: accept a
// connection, dial the upstream, copy bytes both ways (io.Copy, splice(2)
// between the sockets on Linux), no parsing at all. What it adds to a
// request is the two extra socket hops and process wake-ups every proxy
// pays on this machine; the activator's overhead above it is its own.
func serveTCPCopy(args []string) error {
	fs := flag.NewFlagSet("serve-tcpcopy", flag.ContinueOnError)
	upstream := fs.String("upstream", "", "HOST:PORT to copy to")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *upstream == "" {
		return errors.New("serve-tcpcopy: -upstream is required")
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Printf("listening on %s\n", lis.Addr())
	for {
		c, err := lis.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			u, err := net.Dial("tcp", *upstream)
			if err != nil {
				fmt.Fprintln(os.Stderr, "serve-tcpcopy:", err)
				return
			}
			defer u.Close()
			go func() {
				_, _ = io.Copy(u, c)
				_ = u.(*net.TCPConn).CloseWrite()
			}()
			_, _ = io.Copy(c, u)
		}()
	}
}

// cpuLimit puts a running process under a CFS quota, as a pod's
// resources.limits.cpu does, in a cgroup of its own (internal/cgroup, the
// node agent's code); undo removes the group.
func cpuLimit(pid int, milli int64) (undo func(), err error) {
	m, err := cgroup.Detect(fmt.Sprintf("mlscale/activatorbench-%d", os.Getpid()))
	if err != nil {
		return nil, err
	}
	g, err := m.Create("server", cgroup.Limits{CPUMilli: milli, CPURequestMilli: milli})
	if err != nil {
		return nil, err
	}
	if err := g.Add(pid); err != nil {
		_ = m.Root().Destroy(5 * time.Second)
		return nil, err
	}
	return func() { _ = m.Root().Destroy(5 * time.Second) }, nil
}
