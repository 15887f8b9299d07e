package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/mlscale/mlscale/internal/cgroup"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/ptr"
)

// Config configures the agent.
type Config struct {
	NodeName string
	// NodeIP is the node's InternalIP; the kubelet API listens there.
	NodeIP      string
	KubeletPort int
	// PodIPs are the addresses handed to pods, in order, reused last.
	PodIPs []string
	Client kubernetes.Interface
	Images ImageMap
	// WorkDir is every container's working directory (the repository root:
	// the local manifests name files relative to it).
	WorkDir  string
	StateDir string
	// ServingCert/Key serve the kubelet API (TLS).
	ServingCert, ServingKey string
	// APIServerHost/Port are what pods get as KUBERNETES_SERVICE_HOST/PORT:
	// the API server's real address, as there is no kube-proxy for the
	// kubernetes Service's cluster IP.
	APIServerHost string
	APIServerPort int
	// RestartBackoff is the first restart delay (the kubelet's is 10 s).
	RestartBackoff time.Duration
	// CPUs is the node's advertised CPU capacity; 0 means the machine's.
	// Pods are processes sharing the machine, so the scheduler's view can be
	// larger than the cores: a 2-core CI machine still fits the replicas an
	// HPA test asks for (CPU utilisation is usage over request either way).
	CPUs int
	// ClusterDomain is the DNS domain of Service names in the pods' hosts
	// files and resolv.conf search path; "" means cluster.local.
	ClusterDomain string
	// Cgroups runs each container in its own control group with its
	// resources.limits.cpu as a CFS quota and limits.memory as a memory
	// limit, and reports their usage from the cgroup as the kubelet does.
	// CgroupsAuto (the default) uses them when the machine allows (root and
	// a writable cpu controller) and says so in the log when not.
	Cgroups CgroupMode
	Log     io.Writer
}

// CgroupMode says whether containers run in control groups.
type CgroupMode int

const (
	// CgroupsAuto enforces limits when the machine allows, else logs why not.
	CgroupsAuto CgroupMode = iota
	// CgroupsRequired fails New when limits cannot be enforced.
	CgroupsRequired
	// CgroupsOff runs containers as plain processes, limits not enforced.
	CgroupsOff
)

// Agent is a running node.
type Agent struct {
	cfg      Config
	client   kubernetes.Interface
	objects  ObjectSource
	volumes  volumeWriter
	recorder record.EventRecorder
	ips      *ipPool
	pids     *pidTable
	net      *netFiles
	// cg makes the pods' control groups; nil when limits are not enforced.
	cg *cgroup.Manager

	mu      sync.Mutex
	runners map[types.UID]*podRunner
	wg      sync.WaitGroup
	logMu   sync.Mutex
}

// New creates an agent.
func New(cfg Config) (*Agent, error) {
	if cfg.NodeName == "" || cfg.NodeIP == "" || cfg.Client == nil {
		return nil, errors.New("node agent: NodeName, NodeIP and Client are required")
	}
	if len(cfg.PodIPs) == 0 {
		return nil, errors.New("node agent: no pod addresses")
	}
	if cfg.RestartBackoff <= 0 {
		cfg.RestartBackoff = 10 * time.Second
	}
	if cfg.KubeletPort == 0 {
		cfg.KubeletPort = 10250
	}
	a := &Agent{
		cfg: cfg, client: cfg.Client,
		objects: apiObjects{cfg.Client},
		ips:     newIPPool(cfg.PodIPs),
		pids:    newPidTable(),
		runners: map[types.UID]*podRunner{},
	}
	a.volumes = volumeWriter{client: cfg.Client, objects: a.objects}
	if err := a.setupCgroups(); err != nil {
		return nil, err
	}
	a.net = newNetFiles(cfg.ClusterDomain, a.logf)
	return a, nil
}

func (a *Agent) logf(format string, args ...any) {
	if a.cfg.Log == nil {
		return
	}
	a.logMu.Lock()
	defer a.logMu.Unlock()
	fmt.Fprintf(a.cfg.Log, "node: "+format+"\n", args...)
}

func (a *Agent) serviceEnv() map[string]string {
	port := strconv.Itoa(a.cfg.APIServerPort)
	host := a.cfg.APIServerHost
	return map[string]string{
		"KUBERNETES_SERVICE_HOST":       host,
		"KUBERNETES_SERVICE_PORT":       port,
		"KUBERNETES_SERVICE_PORT_HTTPS": port,
		"KUBERNETES_PORT":               "tcp://" + net.JoinHostPort(host, port),
		"KUBERNETES_PORT_443_TCP":       "tcp://" + net.JoinHostPort(host, port),
		"KUBERNETES_PORT_443_TCP_PROTO": "tcp",
		"KUBERNETES_PORT_443_TCP_PORT":  port,
		"KUBERNETES_PORT_443_TCP_ADDR":  host,
	}
}

// Run registers the node, serves the kubelet API and runs pods until ctx
// ends; then it stops every pod's processes and returns.
func (a *Agent) Run(ctx context.Context) error {
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: a.client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	a.recorder = broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kubelet", Host: a.cfg.NodeName})

	srv, err := a.serve()
	if err != nil {
		return err
	}
	defer srv.Close()
	if err := a.register(ctx); err != nil {
		return err
	}
	go a.heartbeat(ctx)
	if err := a.watchServices(ctx); err != nil {
		return err
	}

	factory := informers.NewSharedInformerFactoryWithOptions(a.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", a.cfg.NodeName).String()
		}))
	inf := factory.Core().V1().Pods().Informer()
	_, err = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { a.podChanged(ctx, obj) },
		UpdateFunc: func(_, obj any) { a.podChanged(ctx, obj) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if p, ok := obj.(*corev1.Pod); ok {
				a.mu.Lock()
				r := a.runners[p.UID]
				a.mu.Unlock()
				if r != nil {
					r.markGone()
				}
			}
		},
	})
	if err != nil {
		return fmt.Errorf("watching pods: %w", err)
	}
	factory.Start(ctx.Done())
	a.logf("%s ready at %s (kubelet API :%d)", a.cfg.NodeName, a.cfg.NodeIP, a.cfg.KubeletPort)
	<-ctx.Done()
	factory.Shutdown()
	a.logf("stopping pods")
	a.wg.Wait()
	if a.cg != nil {
		if err := a.cg.Root().Destroy(10 * time.Second); err != nil {
			a.logf("removing the node's cgroups: %v", err)
		}
	}
	return nil
}

// watchServices keeps the pods' hosts files in line with the Services; it
// returns once the Service cache has synced, so the first pods already see
// every Service.
func (a *Agent) watchServices(ctx context.Context) error {
	factory := informers.NewSharedInformerFactory(a.client, 0)
	inf := factory.Core().V1().Services()
	_, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { a.net.changed() },
		UpdateFunc: func(any, any) { a.net.changed() },
		DeleteFunc: func(any) { a.net.changed() },
	})
	if err != nil {
		return fmt.Errorf("watching services: %w", err)
	}
	a.net.setLister(inf.Lister())
	factory.Start(ctx.Done())
	go func() {
		<-ctx.Done()
		factory.Shutdown()
	}()
	if !cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) {
		return nil // stopping before it synced
	}
	go a.net.run(ctx)
	return nil
}

func (a *Agent) podChanged(ctx context.Context, obj any) {
	p, ok := obj.(*corev1.Pod)
	if !ok || ctx.Err() != nil {
		return
	}
	if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		a.mu.Lock()
		_, running := a.runners[p.UID]
		a.mu.Unlock()
		if !running {
			if p.DeletionTimestamp != nil {
				// Finished before it was deleted: just complete the delete.
				r := newPodRunner(a, p)
				a.track(ctx, r)
			}
			return
		}
	}
	a.mu.Lock()
	r, ok := a.runners[p.UID]
	a.mu.Unlock()
	if ok {
		r.update(p)
		return
	}
	a.track(ctx, newPodRunner(a, p))
}

func (a *Agent) track(ctx context.Context, r *podRunner) {
	a.mu.Lock()
	a.runners[r.pod.UID] = r
	a.mu.Unlock()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		r.run(ctx)
	}()
}

// forget drops a runner once it is done. A pod UID never comes back.
func (a *Agent) forget(uid types.UID) {
	// Keep the tombstone: the informer may still deliver the deleted pod's
	// last update, which must not start it again.
	a.mu.Lock()
	defer a.mu.Unlock()
	if r, ok := a.runners[uid]; ok {
		r.markGone()
	}
}

func (a *Agent) nodeObject() (*corev1.Node, error) {
	mem, err := memTotal()
	if err != nil {
		return nil, err
	}
	cpus := a.cfg.CPUs
	if cpus <= 0 {
		cpus = runtime.NumCPU()
	}
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:              *resource.NewQuantity(int64(cpus), resource.DecimalSI),
		corev1.ResourceMemory:           *resource.NewQuantity(mem, resource.BinarySI),
		corev1.ResourcePods:             *resource.NewQuantity(int64(len(a.cfg.PodIPs)), resource.DecimalSI),
		corev1.ResourceEphemeralStorage: resource.MustParse("10Gi"),
	}
	now := metav1.Now()
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: a.cfg.NodeName, Labels: map[string]string{
			"kubernetes.io/hostname": a.cfg.NodeName, "kubernetes.io/os": "linux",
			"kubernetes.io/arch": runtime.GOARCH, "node.kubernetes.io/instance-type": "mlscale-local",
		}},
		Status: corev1.NodeStatus{
			Capacity: capacity, Allocatable: capacity,
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: a.cfg.NodeIP},
				{Type: corev1.NodeHostName, Address: a.cfg.NodeName},
			},
			DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: int32(a.cfg.KubeletPort)}},
			NodeInfo: corev1.NodeSystemInfo{
				OperatingSystem: "linux", Architecture: runtime.GOARCH, KubeletVersion: "v1.37.2",
				ContainerRuntimeVersion: "mlscale-local://processes", OSImage: "mlscale local node",
			},
			Conditions: []corev1.NodeCondition{
				{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", Message: "mlscale node agent is posting ready status", LastHeartbeatTime: now, LastTransitionTime: now},
				{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientMemory", LastHeartbeatTime: now, LastTransitionTime: now},
				{Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasNoDiskPressure", LastHeartbeatTime: now, LastTransitionTime: now},
				{Type: corev1.NodePIDPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientPID", LastHeartbeatTime: now, LastTransitionTime: now},
			},
		},
	}, nil
}

// register creates the Node (or takes over one left by an earlier run) and
// posts its status.
func (a *Agent) register(ctx context.Context) error {
	want, err := a.nodeObject()
	if err != nil {
		return err
	}
	nodes := a.client.CoreV1().Nodes()
	n, err := nodes.Create(ctx, want, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		n, err = nodes.Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
	}
	if err != nil {
		return fmt.Errorf("registering node %s: %w", a.cfg.NodeName, err)
	}
	n.Status = want.Status
	if _, err := nodes.UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("posting node %s status: %w", a.cfg.NodeName, err)
	}
	return nil
}

// heartbeat renews the node's Lease every 10 s (what the node lifecycle
// controller watches) and posts the Ready status every minute.
func (a *Agent) heartbeat(ctx context.Context) {
	leases := a.client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	lastStatus := time.Now()
	for {
		now := metav1.NewMicroTime(time.Now())
		l, err := leases.Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			_, err = leases.Create(ctx, &coordinationv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Name: a.cfg.NodeName, Namespace: corev1.NamespaceNodeLease},
				Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(a.cfg.NodeName),
					LeaseDurationSeconds: ptr.To[int32](40), RenewTime: &now},
			}, metav1.CreateOptions{})
		case err == nil:
			l.Spec.RenewTime = &now
			_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
		}
		if err != nil && ctx.Err() == nil {
			a.logf("renewing the node lease: %v", err)
		}
		if time.Since(lastStatus) > time.Minute {
			if err := a.register(ctx); err != nil && ctx.Err() == nil {
				a.logf("%v", err)
			}
			lastStatus = time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// serve starts the kubelet API: /metrics/resource (for metrics-server),
// /healthz, /containerLogs (for kubectl logs).
func (a *Agent) serve() (*http.Server, error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics/resource", a.resourceMetricsHandler())
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })
	mux.HandleFunc("/containerLogs/{ns}/{pod}/{container}", a.containerLogs)
	addr := net.JoinHostPort(a.cfg.NodeIP, strconv.Itoa(a.cfg.KubeletPort))
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("kubelet API on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		var err error
		if a.cfg.ServingCert != "" {
			err = srv.ServeTLS(l, a.cfg.ServingCert, a.cfg.ServingKey)
		} else {
			err = srv.Serve(l)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.logf("kubelet API: %v", err)
		}
	}()
	return srv, nil
}

func (a *Agent) containerLogs(w http.ResponseWriter, r *http.Request) {
	ns, pod, container := r.PathValue("ns"), r.PathValue("pod"), r.PathValue("container")
	a.mu.Lock()
	var dir string
	for _, run := range a.runners {
		if run.pod.Namespace == ns && run.pod.Name == pod && run.dir != "" {
			dir = run.dir
		}
	}
	a.mu.Unlock()
	if dir == "" {
		http.Error(w, fmt.Sprintf("pod %s/%s is not running on this node", ns, pod), http.StatusNotFound)
		return
	}
	f, err := os.Open(filepath.Join(dir, filepath.Base(container)+".log"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "text/plain")
	_, _ = io.Copy(w, f)
}

// ipPool hands out pod addresses round-robin, so an address is not reused
// right after its pod went away (clients may still hold it).
type ipPool struct {
	mu   sync.Mutex
	ips  []string
	next int
	used map[string]types.UID
	by   map[types.UID]string
}

func newIPPool(ips []string) *ipPool {
	return &ipPool{ips: ips, used: map[string]types.UID{}, by: map[types.UID]string{}}
}

func (p *ipPool) allocate(uid types.UID) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ip, ok := p.by[uid]; ok {
		return ip, nil
	}
	for i := 0; i < len(p.ips); i++ {
		ip := p.ips[(p.next+i)%len(p.ips)]
		if _, taken := p.used[ip]; !taken {
			p.next = (p.next + i + 1) % len(p.ips)
			p.used[ip], p.by[uid] = uid, ip
			return ip, nil
		}
	}
	return "", fmt.Errorf("no free pod address: all %d are in use", len(p.ips))
}

func (p *ipPool) release(uid types.UID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ip, ok := p.by[uid]; ok {
		delete(p.used, ip)
		delete(p.by, uid)
	}
}

// PodIPs lists the host addresses of cidr except the network address and
// the first host (the node's own).
func PodIPs(cidr string) ([]string, string, error) {
	ip, n, err := net.ParseCIDR(cidr)
	if err != nil {
		return nil, "", fmt.Errorf("pod CIDR %q: %w", cidr, err)
	}
	ip4 := ip.Mask(n.Mask).To4()
	if ip4 == nil {
		return nil, "", fmt.Errorf("pod CIDR %q: only IPv4 is supported", cidr)
	}
	ones, bits := n.Mask.Size()
	size := 1 << (bits - ones)
	if size < 4 {
		return nil, "", fmt.Errorf("pod CIDR %q is too small", cidr)
	}
	base := uint32(ip4[0])<<24 | uint32(ip4[1])<<16 | uint32(ip4[2])<<8 | uint32(ip4[3])
	at := func(i int) string {
		v := base + uint32(i)
		return net.IPv4(byte(v>>24), byte(v>>16), byte(v>>8), byte(v)).String()
	}
	var ips []string
	for i := 2; i < size-1 && len(ips) < 1024; i++ {
		ips = append(ips, at(i))
	}
	return ips, at(1), nil
}
