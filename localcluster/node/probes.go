package node

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// startProbes runs the container's startup, readiness and liveness probes
// with the kubelet's semantics: readiness and liveness wait for startup;
// thresholds count consecutive results; only transitions are reported.
func (r *podRunner) startProbes(ctx context.Context, c *containerRun) {
	gen := c.gen
	send := func(kind string) { r.send(containerEvent{index: c.index, gen: gen, kind: kind}) }
	startedCh := make(chan struct{})
	go func() {
		if c.spec.StartupProbe != nil {
			if !r.probeLoop(ctx, c, "startup", c.spec.StartupProbe, func(ok bool) bool {
				if ok {
					return false // stop: started
				}
				send("startup-failed")
				return false
			}) {
				return
			}
			send("started")
		}
		close(startedCh)
	}()
	if p := c.spec.ReadinessProbe; p != nil {
		go func() {
			select {
			case <-startedCh:
			case <-ctx.Done():
				return
			}
			r.probeLoop(ctx, c, "readiness", p, func(ok bool) bool {
				if ok {
					send("ready")
				} else {
					send("notready")
				}
				return true
			})
		}()
	}
	if p := c.spec.LivenessProbe; p != nil {
		go func() {
			select {
			case <-startedCh:
			case <-ctx.Done():
				return
			}
			r.probeLoop(ctx, c, "liveness", p, func(ok bool) bool {
				if !ok {
					send("liveness-failed")
					return false
				}
				return true
			})
		}()
	}
}

// probeLoop probes until ctx ends or onChange returns false; onChange gets
// each transition (success after successThreshold, failure after
// failureThreshold). It returns whether the last result was a success.
func (r *podRunner) probeLoop(ctx context.Context, c *containerRun, kind string, p *corev1.Probe, onChange func(ok bool) bool) bool {
	period := secondsOr(p.PeriodSeconds, 10)
	timeout := secondsOr(p.TimeoutSeconds, 1)
	failTh := intOr(p.FailureThreshold, 3)
	okTh := intOr(p.SuccessThreshold, 1)
	if p.InitialDelaySeconds > 0 {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(time.Duration(p.InitialDelaySeconds) * time.Second):
		}
	}
	var state *bool
	oks, fails := 0, 0
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, timeout)
		err := r.probe(pctx, c, p.ProbeHandler)
		cancel()
		if ctx.Err() != nil {
			return false
		}
		if err == nil {
			oks, fails = oks+1, 0
		} else {
			oks, fails = 0, fails+1
		}
		var change *bool
		switch {
		case err == nil && oks >= okTh && (state == nil || !*state):
			v := true
			change = &v
		case err != nil && fails >= failTh && (state == nil || *state):
			v := false
			change = &v
			r.event(corev1.EventTypeWarning, "Unhealthy", "%s probe failed: %v", strings.Title(kind), err) //nolint:staticcheck // ASCII words
		}
		if change != nil {
			state = change
			if !onChange(*change) {
				return *change
			}
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}

func secondsOr(v int32, def int) time.Duration {
	if v <= 0 {
		return time.Duration(def) * time.Second
	}
	return time.Duration(v) * time.Second
}

func intOr(v int32, def int) int {
	if v <= 0 {
		return def
	}
	return int(v)
}

// probe performs one probe.
func (r *podRunner) probe(ctx context.Context, c *containerRun, h corev1.ProbeHandler) error {
	switch {
	case h.HTTPGet != nil:
		return r.httpGet(ctx, c, h.HTTPGet)
	case h.TCPSocket != nil:
		port, err := resolvePort(c, h.TCPSocket.Port)
		if err != nil {
			return err
		}
		host := h.TCPSocket.Host
		if host == "" {
			host = r.ip
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return conn.Close()
	case h.Exec != nil:
		return r.execIn(ctx, c, h.Exec.Command)
	case h.GRPC != nil:
		return fmt.Errorf("gRPC probes are not supported by the local node")
	}
	return fmt.Errorf("probe has no handler")
}

// runHandler runs a lifecycle hook.
func (r *podRunner) runHandler(ctx context.Context, c *containerRun, h *corev1.LifecycleHandler) error {
	switch {
	case h.Sleep != nil:
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(h.Sleep.Seconds) * time.Second):
		}
		return nil
	case h.Exec != nil:
		return r.execIn(ctx, c, h.Exec.Command)
	case h.HTTPGet != nil:
		return r.httpGet(ctx, c, h.HTTPGet)
	case h.TCPSocket != nil:
		return nil // deprecated and a no-op in the kubelet too
	}
	return fmt.Errorf("lifecycle handler has no action")
}

var probeClient = &http.Client{
	Transport: &http.Transport{
		// The kubelet does not verify probe certificates either.
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec
		DisableKeepAlives: true,
	},
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

func (r *podRunner) httpGet(ctx context.Context, c *containerRun, g *corev1.HTTPGetAction) error {
	port, err := resolvePort(c, g.Port)
	if err != nil {
		return err
	}
	host := g.Host
	if host == "" {
		host = r.ip
	}
	scheme := strings.ToLower(string(g.Scheme))
	if scheme == "" {
		scheme = "http"
	}
	u := url.URL{Scheme: scheme, Host: net.JoinHostPort(host, strconv.Itoa(port)), Path: g.Path}
	if i := strings.Index(g.Path, "?"); i >= 0 {
		u.Path, u.RawQuery = g.Path[:i], g.Path[i+1:]
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "kube-probe/1.37")
	for _, h := range g.HTTPHeaders {
		req.Header.Add(h.Name, h.Value)
	}
	resp, err := probeClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 10<<10))
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("HTTP probe failed with statuscode: %d", resp.StatusCode)
	}
	return nil
}

// execIn runs a command in the container's mount namespace (nsenter), with
// the container's program directory first on PATH.
func (r *podRunner) execIn(ctx context.Context, c *containerRun, command []string) error {
	if len(command) == 0 {
		return fmt.Errorf("exec: empty command")
	}
	var cmd *exec.Cmd
	if c.mountNS {
		args := append([]string{"-t", strconv.Itoa(c.pid), "-m", "--"}, command...)
		cmd = exec.CommandContext(ctx, "nsenter", args...)
	} else {
		cmd = exec.CommandContext(ctx, command[0], command[1:]...)
	}
	cmd.Dir = r.a.cfg.WorkDir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("command %q: %w: %s", strings.Join(command, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// resolvePort turns a named port into the container's port number.
func resolvePort(c *containerRun, p intstr.IntOrString) (int, error) {
	if p.Type == intstr.Int {
		return p.IntValue(), nil
	}
	for _, cp := range c.spec.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	if n, err := strconv.Atoi(p.StrVal); err == nil {
		return n, nil
	}
	return 0, fmt.Errorf("container %s has no port named %q", c.spec.Name, p.StrVal)
}
