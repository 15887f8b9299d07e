package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

// containerRun is one container's process and what the kubelet would report
// about it. Fields are owned by the pod's run loop.
type containerRun struct {
	spec         corev1.Container
	index        int
	cmd          *exec.Cmd
	pid          int
	exited       chan struct{}
	startedAt    time.Time
	running      bool
	started      bool // startup probe passed (or none)
	ready        bool
	restartCount int32
	lastTerm     *corev1.ContainerStateTerminated
	term         *corev1.ContainerStateTerminated // current state when not running
	waiting      *corev1.ContainerStateWaiting
	stopProbes   context.CancelFunc
	mountNS      bool
	binary       string
	// gen counts starts, so late events from an old process are ignored.
	gen int
	// backoff is the delay before the last restart (0 before any), kept
	// per container as the kubelet keeps it (nextBackoff).
	backoff time.Duration
}

type containerEvent struct {
	index, gen int
	kind       string // "exit", "ready", "notready", "started", "liveness-failed", "startup-failed", "restart"
	exitErr    error
}

// podRunner runs one pod, from bound to deleted.
type podRunner struct {
	a          *Agent
	pod        *corev1.Pod
	updates    chan *corev1.Pod
	gone       chan struct{}
	goneOnce   sync.Once
	events     chan containerEvent
	ip         string
	dir        string
	startTime  metav1.Time
	sandboxOK  bool
	containers []*containerRun
	volumes    map[string]string
	stopping   bool // no more restarts
}

func newPodRunner(a *Agent, pod *corev1.Pod) *podRunner {
	return &podRunner{
		a: a, pod: pod,
		updates: make(chan *corev1.Pod, 1),
		gone:    make(chan struct{}),
		events:  make(chan containerEvent, 64),
	}
}

// update hands the latest version of the pod to the run loop.
func (r *podRunner) update(p *corev1.Pod) {
	for {
		select {
		case r.updates <- p:
			return
		default:
			select {
			case <-r.updates:
			default:
			}
		}
	}
}

func (r *podRunner) markGone() { r.goneOnce.Do(func() { close(r.gone) }) }

func (r *podRunner) logf(format string, args ...any) {
	r.a.logf("pod %s/%s: "+format, append([]any{r.pod.Namespace, r.pod.Name}, args...)...)
}

func (r *podRunner) event(typ, reason, format string, args ...any) {
	r.a.recorder.Eventf(r.pod, typ, reason, format, args...)
}

func (r *podRunner) run(ctx context.Context) {
	defer r.a.forget(r.pod.UID)
	if r.pod.DeletionTimestamp != nil {
		r.finish(ctx)
		return
	}
	if r.pod.Spec.HostNetwork {
		r.ip = r.a.cfg.NodeIP
	} else {
		ip, err := r.a.ips.allocate(r.pod.UID)
		if err != nil {
			r.event(corev1.EventTypeWarning, "FailedCreatePodSandBox", "%v", err)
			r.logf("%v", err)
			return
		}
		r.ip = ip
	}
	defer r.a.ips.release(r.pod.UID)
	defer r.a.net.remove(r.pod.UID)
	// Last, after every container has stopped: kill what is left in the
	// pod's cgroup and remove it.
	defer r.removePodGroup()
	r.dir = filepath.Join(r.a.cfg.StateDir, "pods", fmt.Sprintf("%s_%s_%s", r.pod.Namespace, r.pod.Name, r.pod.UID))
	r.startTime = metav1.Now()
	for i := range r.pod.Spec.Containers {
		r.containers = append(r.containers, &containerRun{
			spec: r.pod.Spec.Containers[i], index: i,
			waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"},
		})
	}
	r.syncStatus(ctx)

	// The sandbox: volumes. Retried like the kubelet's volume manager does
	// until the objects exist or the pod is deleted.
	retryT := time.NewTimer(0)
	defer retryT.Stop()
	for !r.sandboxOK {
		select {
		case <-ctx.Done():
			return
		case <-r.gone:
			return
		case p := <-r.updates:
			r.pod = p
			if p.DeletionTimestamp != nil {
				r.finish(ctx)
				return
			}
		case <-retryT.C:
			vols, err := r.a.volumes.Prepare(ctx, r.pod, r.dir)
			if err != nil {
				r.event(corev1.EventTypeWarning, "FailedMount", "%v", err)
				r.logf("volumes: %v", err)
				retryT.Reset(2 * time.Second)
				continue
			}
			if err := r.a.net.add(r.pod.UID, namesOf(r.pod, r.ip), r.dir); err != nil {
				r.event(corev1.EventTypeWarning, "FailedCreatePodSandBox", "hosts file: %v", err)
				r.logf("hosts file: %v", err)
				retryT.Reset(2 * time.Second)
				continue
			}
			r.volumes = vols
			r.sandboxOK = true
		}
	}
	for _, c := range r.containers {
		r.startContainer(ctx, c)
	}
	r.syncStatus(ctx)

	for {
		select {
		case <-ctx.Done():
			// The agent is stopping with the cluster: stop the processes,
			// leave the API alone (it is going away too).
			r.killAll(context.Background(), 5*time.Second, false)
			return
		case <-r.gone:
			r.killAll(ctx, 0, false)
			return
		case p := <-r.updates:
			r.pod = p
			if p.DeletionTimestamp != nil {
				grace := 30 * time.Second
				if p.DeletionGracePeriodSeconds != nil {
					grace = time.Duration(*p.DeletionGracePeriodSeconds) * time.Second
				}
				r.logf("deleting: grace period %s", grace)
				r.killAll(ctx, grace, true)
				r.finish(ctx)
				return
			}
		case ev := <-r.events:
			r.handle(ctx, ev)
			// Drain what else is queued before one status update.
			for more := true; more; {
				select {
				case ev := <-r.events:
					r.handle(ctx, ev)
				default:
					more = false
				}
			}
			r.syncStatus(ctx)
			if r.terminal() {
				r.logf("all containers have exited; phase %s", r.phase())
			}
		}
	}
}

func (r *podRunner) handle(ctx context.Context, ev containerEvent) {
	c := r.containers[ev.index]
	if ev.gen != c.gen {
		return
	}
	switch ev.kind {
	case "started":
		c.started = true
		if c.spec.ReadinessProbe == nil {
			c.ready = true
		}
	case "ready":
		c.ready = c.running
	case "notready":
		c.ready = false
	case "liveness-failed", "startup-failed":
		r.event(corev1.EventTypeNormal, "Killing", "Container %s failed %s probe, will be restarted", c.spec.Name, strings.TrimSuffix(ev.kind, "-failed"))
		go r.stopContainer(ctx, c, r.gracePeriod(), true)
	case "exit":
		r.exited(ctx, c, ev.exitErr)
	case "restart":
		if !c.running && r.pod.DeletionTimestamp == nil && !r.stopping {
			c.restartCount++
			r.startContainer(ctx, c)
		}
	}
}

func (r *podRunner) gracePeriod() time.Duration {
	if g := r.pod.Spec.TerminationGracePeriodSeconds; g != nil {
		return time.Duration(*g) * time.Second
	}
	return 30 * time.Second
}

// exited records a process's end and schedules its restart per
// restartPolicy, with the kubelet's doubling back-off.
func (r *podRunner) exited(ctx context.Context, c *containerRun, waitErr error) {
	code := 0
	reason := "Completed"
	var ee *exec.ExitError
	if errors.As(waitErr, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		} else {
			code = ee.ExitCode()
		}
	} else if waitErr != nil {
		code = 128
	}
	if code != 0 {
		reason = "Error"
	}
	c.running, c.ready, c.started = false, false, false
	if c.stopProbes != nil {
		c.stopProbes()
	}
	c.term = &corev1.ContainerStateTerminated{
		ExitCode: int32(code), Reason: reason,
		StartedAt: metav1.NewTime(c.startedAt), FinishedAt: metav1.Now(),
		ContainerID: containerID(c),
	}
	r.logf("container %s exited with code %d", c.spec.Name, code)
	policy := r.pod.Spec.RestartPolicy
	if policy == corev1.RestartPolicyNever || (policy == corev1.RestartPolicyOnFailure && code == 0) || r.pod.DeletionTimestamp != nil || r.stopping {
		return
	}
	backoff := nextBackoff(c.backoff, r.a.cfg.RestartBackoff, time.Since(c.startedAt))
	c.backoff = backoff
	c.waiting = &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff",
		Message: fmt.Sprintf("back-off %s restarting failed container %s", backoff, c.spec.Name)}
	if c.restartCount == 0 && code == 0 {
		c.waiting.Reason = "ContainerCreating"
	}
	gen := c.gen
	time.AfterFunc(backoff, func() { r.send(containerEvent{index: c.index, gen: gen, kind: "restart"}) })
}

func (r *podRunner) send(ev containerEvent) {
	select {
	case r.events <- ev:
	case <-r.gone:
	}
}

func containerID(c *containerRun) string {
	return fmt.Sprintf("mlscale://%d", c.pid)
}

// startContainer resolves the container's environment, command and mounts,
// and starts its process in its own process group.
func (r *podRunner) startContainer(ctx context.Context, c *containerRun) {
	c.gen++
	if err := r.launch(ctx, c); err != nil {
		r.logf("container %s: %v", c.spec.Name, err)
		r.event(corev1.EventTypeWarning, "Failed", "Error: %v", err)
		c.waiting = &corev1.ContainerStateWaiting{Reason: "CreateContainerError", Message: err.Error()}
		gen := c.gen
		time.AfterFunc(r.a.cfg.RestartBackoff, func() { r.send(containerEvent{index: c.index, gen: gen, kind: "restart"}) })
		return
	}
	r.event(corev1.EventTypeNormal, "Started", "Started container %s (pid %d, %s)", c.spec.Name, c.pid, c.binary)
	r.logf("container %s started: pid %d on %s", c.spec.Name, c.pid, r.ip)
	pctx, cancel := context.WithCancel(context.Background())
	c.stopProbes = cancel
	r.startProbes(pctx, c)
}

func (r *podRunner) launch(ctx context.Context, c *containerRun) error {
	view := r.pod.DeepCopy()
	view.Status.PodIP = r.ip
	view.Status.PodIPs = []corev1.PodIP{{IP: r.ip}}
	view.Status.HostIP = r.a.cfg.NodeIP
	view.Status.HostIPs = []corev1.HostIP{{IP: r.a.cfg.NodeIP}}
	envMap, envList, err := ResolveEnv(ctx, r.a.objects, view, &c.spec, r.a.serviceEnv())
	if err != nil {
		return err
	}
	expand := func(in []string) []string {
		out := make([]string, len(in))
		for i, s := range in {
			out[i] = Expand(s, mapFrom(envMap))
		}
		return out
	}
	bin, args, err := r.a.cfg.Images.Resolve(&c.spec, expand(c.spec.Command), expand(c.spec.Args))
	if err != nil {
		return err
	}
	mounts, err := containerMounts(&c.spec, r.volumes)
	if err != nil {
		return err
	}
	if os.Geteuid() == 0 {
		// Service names: without root there is no mount namespace, and the
		// container sees the host's files.
		mounts = append(mounts, r.a.net.mounts(&c.spec, r.dir)...)
	}
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(r.dir, c.spec.Name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cg, err := r.containerGroup(&c.spec)
	if err != nil {
		return err
	}
	var cgroupProcs []string
	if cg != nil {
		cgroupProcs = cg.ProcsFiles()
	}
	var cmd *exec.Cmd
	attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// The helper joins the container's cgroup before it execs the program,
	// so nothing the program does runs outside its limits.
	if len(mounts) > 0 || cg != nil {
		if os.Geteuid() != 0 {
			return fmt.Errorf("volume mounts need a private mount namespace, which needs root: run the local cluster as root")
		}
		spec, err := json.Marshal(execSpec{Mounts: mounts, Cgroups: cgroupProcs, Path: bin, Args: args})
		if err != nil {
			return err
		}
		self, err := os.Executable()
		if err != nil {
			return fmt.Errorf("finding the node agent's own binary for the container helper: %w", err)
		}
		cmd = exec.Command(self, helperArg, string(spec))
		attr.Cloneflags = syscall.CLONE_NEWNS
		c.mountNS = true
	} else {
		cmd = exec.Command(bin, args...)
		c.mountNS = false
	}
	cmd.SysProcAttr = attr
	// What a container runtime adds when the image and the pod do not.
	for _, kv := range []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME=" + r.pod.Name, "HOME=/root"} {
		if k, _, _ := strings.Cut(kv, "="); envMap[k] == "" {
			envList = append(envList, kv)
		}
	}
	cmd.Env = envList
	cmd.Dir = r.a.cfg.WorkDir
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", bin, err)
	}
	c.cmd, c.pid, c.binary = cmd, cmd.Process.Pid, bin
	c.exited = make(chan struct{})
	c.startedAt = time.Now()
	c.running, c.ready, c.started = true, false, c.spec.StartupProbe == nil
	if c.started && c.spec.ReadinessProbe == nil {
		c.ready = true
	}
	if c.term != nil {
		c.lastTerm = c.term
	}
	c.term, c.waiting = nil, nil
	r.a.pids.add(r.pod, c.spec.Name, c.pid, c.startedAt, cg)
	gen, exited := c.gen, c.exited
	go func() {
		err := cmd.Wait()
		r.a.pids.remove(c.pid)
		close(exited)
		r.send(containerEvent{index: c.index, gen: gen, kind: "exit", exitErr: err})
	}()
	return nil
}

// stopContainer runs the preStop hook, then SIGTERM, then SIGKILL at the end
// of the grace period, to the container's whole process group.
func (r *podRunner) stopContainer(ctx context.Context, c *containerRun, grace time.Duration, preStop bool) {
	if c.cmd == nil || c.exited == nil {
		return
	}
	select {
	case <-c.exited:
		return
	default:
	}
	deadline := time.Now().Add(grace)
	if preStop && c.spec.Lifecycle != nil && c.spec.Lifecycle.PreStop != nil && grace > 0 {
		hctx, cancel := context.WithDeadline(ctx, deadline)
		if err := r.runHandler(hctx, c, c.spec.Lifecycle.PreStop); err != nil {
			r.event(corev1.EventTypeWarning, "FailedPreStopHook", "PreStopHook failed: %v", err)
		}
		cancel()
	}
	pid := c.pid
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	// The kubelet gives at least 2 s after a preStop that used up the grace.
	wait := time.Until(deadline)
	if grace > 0 && wait < 2*time.Second {
		wait = 2 * time.Second
	}
	select {
	case <-c.exited:
	case <-time.After(wait):
		r.logf("container %s did not stop within its grace period: SIGKILL", c.spec.Name)
	}
	// Also whatever the process left behind in its group.
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	<-c.exited
}

// killAll stops every container in parallel.
func (r *podRunner) killAll(ctx context.Context, grace time.Duration, preStop bool) {
	r.stopping = true
	var wg sync.WaitGroup
	for _, c := range r.containers {
		if c.stopProbes != nil {
			c.stopProbes()
		}
		c.ready = false
		if c.running {
			r.event(corev1.EventTypeNormal, "Killing", "Stopping container %s", c.spec.Name)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.stopContainer(ctx, c, grace, preStop)
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for {
		select {
		case <-done:
			// Record the exits.
			for more := true; more; {
				select {
				case ev := <-r.events:
					if ev.kind == "exit" {
						r.handle(ctx, ev)
					}
				default:
					more = false
				}
			}
			return
		case <-r.gone:
			// Force-deleted while draining: stop waiting for the grace period.
			for _, c := range r.containers {
				if c.cmd != nil && c.running {
					_ = syscall.Kill(-c.pid, syscall.SIGKILL)
				}
			}
			<-done
			return
		case ev := <-r.events:
			if ev.kind == "exit" {
				r.handle(ctx, ev)
				r.syncStatus(ctx)
			}
		}
	}
}

// finish reports the final status and removes the pod from the API, which is
// the kubelet's last step of a graceful deletion.
func (r *podRunner) finish(ctx context.Context) {
	if len(r.containers) > 0 {
		r.syncStatus(ctx)
	}
	zero := int64(0)
	uid := r.pod.UID
	err := r.a.client.CoreV1().Pods(r.pod.Namespace).Delete(ctx, r.pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &uid},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		r.logf("final delete: %v", err)
	}
	if r.dir != "" {
		_ = os.RemoveAll(filepath.Join(r.dir, "volumes"))
	}
	r.logf("deleted")
}

func (r *podRunner) terminal() bool {
	if r.pod.Spec.RestartPolicy == corev1.RestartPolicyAlways || len(r.containers) == 0 {
		return false
	}
	for _, c := range r.containers {
		if c.running || c.term == nil {
			return false
		}
		if r.pod.Spec.RestartPolicy == corev1.RestartPolicyOnFailure && c.term.ExitCode != 0 {
			return false
		}
	}
	return true
}

func (r *podRunner) phase() corev1.PodPhase {
	allExited, anyFailed, anyRunning, allStartedOnce := true, false, false, true
	for _, c := range r.containers {
		if c.running {
			anyRunning = true
			allExited = false
		} else if c.term == nil {
			allExited = false
			allStartedOnce = false
		} else if c.term.ExitCode != 0 {
			anyFailed = true
		}
	}
	switch {
	case len(r.containers) == 0 || !r.sandboxOK || !allStartedOnce:
		return corev1.PodPending
	case allExited && (r.terminal() || r.pod.DeletionTimestamp != nil):
		if anyFailed {
			return corev1.PodFailed
		}
		return corev1.PodSucceeded
	case anyRunning || r.pod.Spec.RestartPolicy != corev1.RestartPolicyNever:
		return corev1.PodRunning
	}
	return corev1.PodRunning
}

// status is what the kubelet would report now.
func (r *podRunner) status(old corev1.PodStatus) corev1.PodStatus {
	now := metav1.Now()
	st := corev1.PodStatus{
		Phase:     r.phase(),
		HostIP:    r.a.cfg.NodeIP,
		HostIPs:   []corev1.HostIP{{IP: r.a.cfg.NodeIP}},
		StartTime: &r.startTime,
		QOSClass:  old.QOSClass,
	}
	if r.ip != "" {
		st.PodIP = r.ip
		st.PodIPs = []corev1.PodIP{{IP: r.ip}}
	}
	allReady := len(r.containers) > 0
	for _, c := range r.containers {
		cs := corev1.ContainerStatus{
			Name: c.spec.Name, Image: c.spec.Image, ImageID: "file://" + c.binary,
			Ready: c.ready && c.running, RestartCount: c.restartCount,
		}
		started := c.started && c.running
		cs.Started = &started
		switch {
		case c.running:
			cs.ContainerID = containerID(c)
			cs.State.Running = &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(c.startedAt)}
		case c.waiting != nil:
			cs.State.Waiting = c.waiting
		case c.term != nil:
			cs.ContainerID = c.term.ContainerID
			cs.State.Terminated = c.term
		}
		if c.lastTerm != nil {
			cs.LastTerminationState.Terminated = c.lastTerm
		}
		if !cs.Ready {
			allReady = false
		}
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
	}
	cond := func(t corev1.PodConditionType, ok bool, reason string) corev1.PodCondition {
		s := corev1.ConditionFalse
		if ok {
			s = corev1.ConditionTrue
			reason = ""
		}
		c := corev1.PodCondition{Type: t, Status: s, Reason: reason, LastTransitionTime: now}
		for _, o := range old.Conditions {
			if o.Type == t && o.Status == s {
				c.LastTransitionTime = o.LastTransitionTime
			}
		}
		return c
	}
	terminal := st.Phase == corev1.PodSucceeded || st.Phase == corev1.PodFailed
	st.Conditions = []corev1.PodCondition{
		cond(corev1.PodReadyToStartContainers, r.sandboxOK && !terminal, ""),
		cond(corev1.PodInitialized, true, ""),
		cond(corev1.ContainersReady, allReady, "ContainersNotReady"),
		cond(corev1.PodReady, allReady, "ContainersNotReady"),
	}
	for _, o := range old.Conditions {
		switch o.Type {
		case corev1.PodReadyToStartContainers, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady:
		default:
			st.Conditions = append(st.Conditions, o) // PodScheduled and others' conditions
		}
	}
	return st
}

// syncStatus writes the status to the API server.
func (r *podRunner) syncStatus(ctx context.Context) {
	pods := r.a.client.CoreV1().Pods(r.pod.Namespace)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := pods.Get(ctx, r.pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cur.UID != r.pod.UID {
			return nil
		}
		cur.Status = r.status(cur.Status)
		_, err = pods.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil && !apierrors.IsNotFound(err) && ctx.Err() == nil {
		r.logf("updating status: %v", err)
	}
}
