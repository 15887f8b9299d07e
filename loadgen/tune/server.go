package tune

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/mlscale/mlscale/internal/cgroup"
)

// Server is a model server on loopback whose CPU is limited as a pod's is:
// what `loadgen tune --modelserver` measures when no cluster is at hand.
type Server struct {
	// Addr is host:port it listens on.
	Addr  string
	cmd   *exec.Cmd
	group *cgroup.Group
	root  *cgroup.Manager
	done  chan error
}

// StartServer runs bin with args plus --listen=127.0.0.1:0 in a fresh
// cgroup limited to cpuMilli millicores and memBytes (0: unlimited), and
// waits for its "listening on" line.
func StartServer(ctx context.Context, bin string, args []string, cpuMilli, memBytes int64, log io.Writer) (*Server, error) {
	m, err := cgroup.Detect(fmt.Sprintf("mlscale-tune-%d", os.Getpid()))
	if err != nil {
		return nil, fmt.Errorf("limiting the model server's CPU needs a writable cgroup (run as root): %w", err)
	}
	if m.MemoryError() != nil && memBytes > 0 {
		fmt.Fprintf(log, "memory is not limited: %v\n", m.MemoryError())
	}
	g, err := m.Create("modelserver", cgroup.Limits{CPUMilli: cpuMilli, CPURequestMilli: cpuMilli, MemoryBytes: memBytes})
	if err != nil {
		_ = m.Root().Destroy(5 * time.Second)
		return nil, err
	}
	s := &Server{group: g, root: m, done: make(chan error, 1)}
	// The shell joins the group, then becomes the server: nothing it runs
	// is outside the limit from its first instruction.
	script := `for f in $MLSCALE_CGROUP_PROCS; do echo $$ > "$f" || exit 126; done; exec "$@"`
	s.cmd = exec.Command("/bin/sh", append([]string{"-c", script, "sh", bin}, append(args, "--listen=127.0.0.1:0")...)...)
	s.cmd.Env = append(os.Environ(), "MLSCALE_CGROUP_PROCS="+strings.Join(g.ProcsFiles(), " "))
	s.cmd.Stderr = log
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out, err := s.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := s.cmd.Start(); err != nil {
		_ = m.Root().Destroy(5 * time.Second)
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "listening on "); ok {
				select {
				case addr <- strings.TrimSpace(a):
				default:
				}
			}
		}
	}()
	go func() { s.done <- s.cmd.Wait() }()
	select {
	case s.Addr = <-addr:
		return s, nil
	case err := <-s.done:
		_ = m.Root().Destroy(5 * time.Second)
		return nil, fmt.Errorf("%s exited before listening: %v", bin, err)
	case <-time.After(30 * time.Second):
		s.Stop()
		return nil, errors.New("the model server did not print its address within 30 s")
	case <-ctx.Done():
		s.Stop()
		return nil, ctx.Err()
	}
}

// Usage reads the server's cgroup.
func (s *Server) Usage() (cgroup.Usage, error) { return s.group.Usage() }

// Stop ends the server and removes its cgroup.
func (s *Server) Stop() {
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
	}
	_ = s.root.Root().Destroy(5 * time.Second)
}
