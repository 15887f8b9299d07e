package node

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	corelisters "k8s.io/client-go/listers/core/v1"
)

// There is no cluster DNS: every pod gets an /etc/hosts that names every
// Service's cluster IP (name.ns.svc.<domain>, name.ns.svc, name.ns, and the
// bare name in the pod's own namespace) and an /etc/resolv.conf with the
// cluster's search path and the host's nameservers. Go programs built with
// CGO_ENABLED=0 (and glibc's "files dns") read /etc/hosts before DNS.
//
// The files live in the pod's directory and are bind-mounted over
// /etc/hosts and /etc/resolv.conf in each container's mount namespace. A
// bind mount pins the inode, so when Services change the files are
// rewritten in place, never replaced.

const (
	hostsFile  = "etc-hosts"
	resolvFile = "etc-resolv.conf"
	// hostsDebounce is the least time between two rewrites of every pod's
	// hosts file.
	hostsDebounce = 500 * time.Millisecond
	defaultDomain = "cluster.local"
)

// podNames is what a pod's hosts file says about the pod itself.
type podNames struct {
	Namespace string
	IP        string
	Hostname  string
	Subdomain string
}

func namesOf(pod *corev1.Pod, ip string) podNames {
	host := pod.Spec.Hostname
	if host == "" {
		host = pod.Name
	}
	return podNames{Namespace: pod.Namespace, IP: ip, Hostname: host, Subdomain: pod.Spec.Subdomain}
}

// renderHosts is a pod's /etc/hosts: the localhost lines, the pod's own
// name, then every Service with a cluster IP, sorted by namespace and name.
func renderHosts(pod podNames, services []*corev1.Service, domain string) []byte {
	var b bytes.Buffer
	b.WriteString("# Kubernetes-managed hosts file (mlscale node agent).\n")
	b.WriteString("127.0.0.1\tlocalhost\n")
	b.WriteString("::1\tlocalhost ip6-localhost ip6-loopback\n")
	if pod.IP != "" && pod.Hostname != "" {
		if pod.Subdomain != "" {
			fmt.Fprintf(&b, "%s\t%s.%s.%s.svc.%s %s\n", pod.IP, pod.Hostname, pod.Subdomain, pod.Namespace, domain, pod.Hostname)
		} else {
			fmt.Fprintf(&b, "%s\t%s\n", pod.IP, pod.Hostname)
		}
	}
	svcs := make([]*corev1.Service, 0, len(services))
	for _, s := range services {
		if len(serviceIPs(s)) > 0 {
			svcs = append(svcs, s)
		}
	}
	sort.Slice(svcs, func(i, j int) bool {
		if svcs[i].Namespace != svcs[j].Namespace {
			return svcs[i].Namespace < svcs[j].Namespace
		}
		return svcs[i].Name < svcs[j].Name
	})
	for _, s := range svcs {
		names := []string{
			fmt.Sprintf("%s.%s.svc.%s", s.Name, s.Namespace, domain),
			fmt.Sprintf("%s.%s.svc", s.Name, s.Namespace),
			fmt.Sprintf("%s.%s", s.Name, s.Namespace),
		}
		// The bare name, unless it is the pod's own hostname.
		if s.Namespace == pod.Namespace && s.Name != pod.Hostname {
			names = append(names, s.Name)
		}
		for _, ip := range serviceIPs(s) {
			fmt.Fprintf(&b, "%s\t%s\n", ip, strings.Join(names, " "))
		}
	}
	return b.Bytes()
}

// serviceIPs are the cluster IPs a name resolves to; none for headless and
// ExternalName Services.
func serviceIPs(s *corev1.Service) []string {
	if s.Spec.ClusterIP == "" || s.Spec.ClusterIP == corev1.ClusterIPNone {
		return nil
	}
	if len(s.Spec.ClusterIPs) > 0 {
		return s.Spec.ClusterIPs
	}
	return []string{s.Spec.ClusterIP}
}

// renderResolvConf is a pod's /etc/resolv.conf: the cluster search path and
// the nameserver lines of the host's resolv.conf (hostResolv, may be nil).
func renderResolvConf(namespace, domain string, hostResolv []byte) []byte {
	var b bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(hostResolv))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			fmt.Fprintf(&b, "nameserver %s\n", fields[1])
		}
	}
	fmt.Fprintf(&b, "search %s.svc.%s svc.%s %s\n", namespace, domain, domain, domain)
	b.WriteString("options ndots:5\n")
	return b.Bytes()
}

// writeInPlace replaces path's content keeping its inode (a bind mount of
// the file keeps showing it), creating the file if it is missing.
func writeInPlace(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("opening %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// netFiles keeps the hosts and resolv.conf files of the running pods.
type netFiles struct {
	domain     string
	hostResolv string // the host's resolv.conf, read when a pod starts
	logf       func(format string, args ...any)

	mu       sync.Mutex
	services corelisters.ServiceLister // nil until the agent runs
	pods     map[types.UID]*podNetFiles
	kick     chan struct{}
}

type podNetFiles struct {
	names podNames
	dir   string
	last  []byte // what the hosts file holds
}

func newNetFiles(domain string, logf func(string, ...any)) *netFiles {
	if domain == "" {
		domain = defaultDomain
	}
	return &netFiles{domain: domain, hostResolv: "/etc/resolv.conf", logf: logf,
		pods: map[types.UID]*podNetFiles{}, kick: make(chan struct{}, 1)}
}

// setLister makes later renders list Services from l.
func (n *netFiles) setLister(l corelisters.ServiceLister) {
	n.mu.Lock()
	n.services = l
	n.mu.Unlock()
}

// add writes a pod's files in dir and keeps its hosts file current until
// remove.
func (n *netFiles) add(uid types.UID, names podNames, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("pod directory: %w", err)
	}
	host, err := os.ReadFile(n.hostResolv)
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("reading the host's resolv.conf: %w", err)
	}
	if err := writeInPlace(filepath.Join(dir, resolvFile), renderResolvConf(names.Namespace, n.domain, host)); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	p := &podNetFiles{names: names, dir: dir}
	if err := n.writeHostsLocked(p); err != nil {
		return err
	}
	n.pods[uid] = p
	return nil
}

func (n *netFiles) remove(uid types.UID) {
	n.mu.Lock()
	delete(n.pods, uid)
	n.mu.Unlock()
}

func (n *netFiles) listLocked() []*corev1.Service {
	if n.services == nil {
		return nil
	}
	svcs, err := n.services.List(labels.Everything())
	if err != nil {
		n.logf("listing services for the hosts files: %v", err)
	}
	return svcs
}

func (n *netFiles) writeHostsLocked(p *podNetFiles) error {
	data := renderHosts(p.names, n.listLocked(), n.domain)
	if bytes.Equal(data, p.last) {
		return nil
	}
	if err := writeInPlace(filepath.Join(p.dir, hostsFile), data); err != nil {
		return err
	}
	p.last = data
	return nil
}

// rewriteAll brings every running pod's hosts file up to date.
func (n *netFiles) rewriteAll() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, p := range n.pods {
		if err := n.writeHostsLocked(p); err != nil {
			n.logf("pod %s/%s: updating its hosts file: %v", p.names.Namespace, p.names.Hostname, err)
		}
	}
}

// changed notes that the Services changed.
func (n *netFiles) changed() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// run rewrites the hosts files after Service changes, at most once per
// hostsDebounce, until ctx ends.
func (n *netFiles) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.kick:
		}
		n.rewriteAll()
		select {
		case <-ctx.Done():
			return
		case <-time.After(hostsDebounce):
		}
	}
}

// mounts are the bind mounts of a pod's files in dir for container c, but
// not over a path c mounts a volume at itself.
func (n *netFiles) mounts(c *corev1.Container, dir string) []Mount {
	var ms []Mount
	for _, m := range []Mount{
		{Source: filepath.Join(dir, hostsFile), Target: "/etc/hosts", ReadOnly: true},
		{Source: filepath.Join(dir, resolvFile), Target: "/etc/resolv.conf", ReadOnly: true},
	} {
		taken := false
		for _, vm := range c.VolumeMounts {
			taken = taken || filepath.Clean(vm.MountPath) == m.Target
		}
		if !taken {
			ms = append(ms, m)
		}
	}
	return ms
}
