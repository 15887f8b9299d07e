package controlplane

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/mlscale/mlscale/localcluster/build"
)

// Options configure the control plane.
type Options struct {
	// StateDir holds certificates, kubeconfigs, etcd's data and the logs. It
	// is wiped at start: every run is a fresh cluster.
	StateDir string
	// NodeIP is the address of the node and the API server, inside PodCIDR.
	PodCIDR string
	NodeIP  string
	// ServiceCIDR holds the Services' cluster IPs. Like PodCIDR it is made
	// local on lo, and the service proxy listens on each cluster IP.
	ServiceCIDR string
	// NodeName is the node agent's Node (its certificate is issued for it).
	NodeName string
	// Ports; the API server listens on NodeIP, the rest on 127.0.0.1.
	APIServerPort, EtcdPort, EtcdPeerPort, ControllerManagerPort, SchedulerPort int
	// HPASyncPeriod is the controller-manager's --horizontal-pod-autoscaler-sync-period;
	// 0 leaves Kubernetes' default (15 s).
	HPASyncPeriod time.Duration
	// ExtraControllerManagerArgs are appended (e.g. a downscale stabilisation).
	ExtraControllerManagerArgs []string
	Log                        io.Writer
}

// DefaultOptions are the ports and addresses `localcluster up` uses. The API
// server is not on 6443 so a real cluster's tunnel on this machine (or the
// adapter's default port) does not clash with it.
func DefaultOptions(cacheDir string) Options {
	return Options{
		StateDir:              filepath.Join(cacheDir, "run"),
		PodCIDR:               DefaultPodCIDR,
		ServiceCIDR:           DefaultServiceCIDR,
		NodeIP:                "198.18.0.1",
		NodeName:              "mlscale-local",
		APIServerPort:         16443,
		EtcdPort:              12379,
		EtcdPeerPort:          12380,
		ControllerManagerPort: 16257,
		SchedulerPort:         16259,
	}
}

// ControlPlane is a running control plane.
type ControlPlane struct {
	Opts       Options
	PKI        *PKI
	Server     string
	Client     kubernetes.Interface
	procs      []*Process
	lock       *os.File
	routeAdded bool
	svcRoute   bool
}

// Logf writes one line of progress to Log, when set.
func (o Options) Logf(format string, args ...any) {
	if o.Log != nil {
		fmt.Fprintf(o.Log, format+"\n", args...)
	}
}

// checkPorts fails early and clearly when something already listens where a
// component will, instead of a component dying with "address in use".
func checkPorts(addrs map[string]string) error {
	for name, addr := range addrs {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("%s cannot listen on %s, something else is using it: %w", name, addr, err)
		}
		l.Close()
	}
	return nil
}

// StartControlPlane starts etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler, waiting for each to be healthy. On error everything started
// so far is stopped again.
func StartControlPlane(ctx context.Context, bins build.Binaries, o Options) (_ *ControlPlane, err error) {
	if err := os.MkdirAll(filepath.Dir(o.StateDir), 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", filepath.Dir(o.StateDir), err)
	}
	cp := &ControlPlane{Opts: o}
	// One lock per machine, not per state directory: the ports and the pod
	// addresses are the machine's.
	cp.lock, err = lockFile(filepath.Join(os.TempDir(), "mlscale-localcluster.lock"))
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			cp.Stop()
		}
	}()
	if err := clearStateDir(o.StateDir); err != nil {
		return nil, err
	}
	if cp.routeAdded, err = AddLocalRoute(o.PodCIDR); err != nil {
		return nil, err
	}
	if cp.svcRoute, err = AddLocalRoute(o.ServiceCIDR); err != nil {
		return nil, err
	}
	nodeIP := net.ParseIP(o.NodeIP)
	apiAddr := net.JoinHostPort(o.NodeIP, strconv.Itoa(o.APIServerPort))
	if err := checkPorts(map[string]string{
		"kube-apiserver":          apiAddr,
		"etcd":                    fmt.Sprintf("127.0.0.1:%d", o.EtcdPort),
		"etcd (peer)":             fmt.Sprintf("127.0.0.1:%d", o.EtcdPeerPort),
		"kube-controller-manager": fmt.Sprintf("127.0.0.1:%d", o.ControllerManagerPort),
		"kube-scheduler":          fmt.Sprintf("127.0.0.1:%d", o.SchedulerPort),
	}); err != nil {
		return nil, err
	}
	cp.Server = "https://" + apiAddr
	o.Logf("certificates: %s", filepath.Join(o.StateDir, "pki"))
	cp.PKI, err = GeneratePKI(filepath.Join(o.StateDir, "pki"), cp.Server,
		[]net.IP{nodeIP, net.ParseIP("127.0.0.1")}, o.NodeName, nodeIP)
	if err != nil {
		return nil, err
	}
	logs := filepath.Join(o.StateDir, "logs")
	p := cp.PKI

	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", o.EtcdPort)
	etcd, err := cp.start("etcd", bins.Etcd, []string{
		"--name=mlscale-local", "--data-dir=" + filepath.Join(o.StateDir, "etcd"),
		"--listen-client-urls=" + etcdURL, "--advertise-client-urls=" + etcdURL,
		fmt.Sprintf("--listen-peer-urls=http://127.0.0.1:%d", o.EtcdPeerPort),
		fmt.Sprintf("--initial-advertise-peer-urls=http://127.0.0.1:%d", o.EtcdPeerPort),
		fmt.Sprintf("--initial-cluster=mlscale-local=http://127.0.0.1:%d", o.EtcdPeerPort),
		"--unsafe-no-fsync", // a throwaway cluster: durability is not worth the disk latency
		"--log-level=warn",
	}, logs)
	if err != nil {
		return nil, err
	}
	if err := WaitFor(ctx, "etcd", etcd, 30*time.Second, httpOK(http.DefaultClient, etcdURL+"/health")); err != nil {
		return nil, err
	}

	api, err := cp.start("kube-apiserver", bins.APIServer, []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=" + o.NodeIP, "--advertise-address=" + o.NodeIP,
		fmt.Sprintf("--secure-port=%d", o.APIServerPort),
		"--cert-dir=" + filepath.Join(o.StateDir, "apiserver"),
		"--tls-cert-file=" + p.APIServerCert, "--tls-private-key-file=" + p.APIServerKey,
		"--client-ca-file=" + p.CACert,
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		"--service-cluster-ip-range=" + o.ServiceCIDR,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.ServiceAccountPub,
		"--service-account-signing-key-file=" + p.ServiceAccountKey,
		"--kubelet-client-certificate=" + p.KubeletClientCert, "--kubelet-client-key=" + p.KubeletClientKey,
		"--kubelet-certificate-authority=" + p.CACert,
		"--kubelet-preferred-address-types=InternalIP",
		// The aggregation layer, configured as kubeadm (and EKS) do.
		"--requestheader-client-ca-file=" + p.FrontProxyCACert,
		"--requestheader-allowed-names=front-proxy-client",
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + p.FrontProxyClientCert, "--proxy-client-key-file=" + p.FrontProxyClientKey,
		// No kube-proxy here: the aggregator must dial endpoint addresses,
		// not the Service's cluster IP.
		"--enable-aggregator-routing=true",
		"--endpoint-reconciler-type=lease",
		"--v=1",
	}, logs)
	if err != nil {
		return nil, err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", p.AdminKubeconfig)
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", p.AdminKubeconfig, err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating the admin client: %w", err)
	}
	cp.Client = cs
	if err := WaitFor(ctx, "kube-apiserver", api, 90*time.Second, func(ctx context.Context) error {
		body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			return fmt.Errorf("%w: %s", err, body)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	o.Logf("kube-apiserver ready at %s", cp.Server)

	cmArgs := []string{
		"--kubeconfig=" + p.ControllerManagerKubeconfig,
		"--authentication-kubeconfig=" + p.ControllerManagerKubeconfig,
		"--authorization-kubeconfig=" + p.ControllerManagerKubeconfig,
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", o.ControllerManagerPort),
		"--cert-dir=" + filepath.Join(o.StateDir, "controller-manager"),
		"--leader-elect=false",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + p.ServiceAccountKey,
		"--root-ca-file=" + p.CACert,
		"--cluster-name=mlscale-local",
		"--v=1",
	}
	if o.HPASyncPeriod > 0 {
		cmArgs = append(cmArgs, "--horizontal-pod-autoscaler-sync-period="+o.HPASyncPeriod.String())
	}
	cmArgs = append(cmArgs, o.ExtraControllerManagerArgs...)
	cm, err := cp.start("kube-controller-manager", bins.ControllerManager, cmArgs, logs)
	if err != nil {
		return nil, err
	}
	sched, err := cp.start("kube-scheduler", bins.Scheduler, []string{
		"--kubeconfig=" + p.SchedulerKubeconfig,
		"--authentication-kubeconfig=" + p.SchedulerKubeconfig,
		"--authorization-kubeconfig=" + p.SchedulerKubeconfig,
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", o.SchedulerPort),
		"--cert-dir=" + filepath.Join(o.StateDir, "scheduler"),
		"--leader-elect=false",
		"--v=1",
	}, logs)
	if err != nil {
		return nil, err
	}
	insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} // their self-signed serving certs
	if err := WaitFor(ctx, "kube-controller-manager", cm, 60*time.Second,
		httpOK(insecure, fmt.Sprintf("https://127.0.0.1:%d/healthz", o.ControllerManagerPort))); err != nil {
		return nil, err
	}
	if err := WaitFor(ctx, "kube-scheduler", sched, 60*time.Second,
		httpOK(insecure, fmt.Sprintf("https://127.0.0.1:%d/healthz", o.SchedulerPort))); err != nil {
		return nil, err
	}
	o.Logf("kube-controller-manager and kube-scheduler healthy")
	return cp, nil
}

func (cp *ControlPlane) start(name, bin string, args []string, logDir string) (*Process, error) {
	cp.Opts.Logf("starting %s (log: %s)", name, filepath.Join(logDir, name+".log"))
	p, err := StartProcess(name, bin, args, nil, logDir)
	if err != nil {
		return nil, err
	}
	cp.procs = append(cp.procs, p)
	return p, nil
}

// Failed returns a channel that yields the first component to exit.
func (cp *ControlPlane) Failed() <-chan *Process {
	ch := make(chan *Process, len(cp.procs))
	for _, p := range cp.procs {
		go func() {
			<-p.Done()
			ch <- p
		}()
	}
	return ch
}

// Stop stops the components in reverse order and releases the lock.
func (cp *ControlPlane) Stop() {
	for i := len(cp.procs) - 1; i >= 0; i-- {
		cp.Opts.Logf("stopping %s", cp.procs[i].Name)
		cp.procs[i].Stop(10 * time.Second)
	}
	cp.procs = nil
	if cp.routeAdded {
		if err := DelLocalRoute(cp.Opts.PodCIDR); err != nil {
			cp.Opts.Logf("%v", err)
		}
		cp.routeAdded = false
	}
	if cp.svcRoute {
		if err := DelLocalRoute(cp.Opts.ServiceCIDR); err != nil {
			cp.Opts.Logf("%v", err)
		}
		cp.svcRoute = false
	}
	if cp.lock != nil {
		cp.lock.Close()
		cp.lock = nil
	}
}

func httpOK(c *http.Client, url string) func(context.Context) error {
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if resp.StatusCode != http.StatusOK {
			return errors.New(resp.Status + ": " + string(body))
		}
		return nil
	}
}

// stateMarker marks a directory as a local cluster's state, which the next
// start may wipe; any other non-empty directory is refused.
const stateMarker = ".mlscale-localcluster"

func clearStateDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("reading the state directory: %w", err)
	}
	if len(entries) > 0 {
		if _, err := os.Stat(filepath.Join(dir, stateMarker)); err != nil {
			return fmt.Errorf("state directory %s is not empty and is not a local cluster's state: refusing to wipe it", dir)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("clearing the state of the previous run: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating the state directory: %w", err)
	}
	return os.WriteFile(filepath.Join(dir, stateMarker), nil, 0o644)
}
