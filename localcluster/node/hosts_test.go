package node

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/mlscale/mlscale/internal/testenv"
)

func svc(ns, name string, ips ...string) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if len(ips) > 0 {
		s.Spec.ClusterIP, s.Spec.ClusterIPs = ips[0], ips
	}
	return s
}

const hostsHeader = "# Kubernetes-managed hosts file (mlscale node agent).\n" +
	"127.0.0.1\tlocalhost\n" +
	"::1\tlocalhost ip6-localhost ip6-loopback\n"

func TestRenderHosts(t *testing.T) {
	for _, tc := range []struct {
		name     string
		pod      podNames
		services []*corev1.Service
		domain   string
		want     string
	}{{
		name: "no services",
		pod:  podNames{Namespace: "ns", IP: "198.18.0.5", Hostname: "web-1"},
		want: hostsHeader + "198.18.0.5\tweb-1\n",
	}, {
		name:   "hostname with subdomain",
		pod:    podNames{Namespace: "ns", IP: "198.18.0.5", Hostname: "db-0", Subdomain: "db"},
		domain: "example.test",
		want:   hostsHeader + "198.18.0.5\tdb-0.db.ns.svc.example.test db-0\n",
	}, {
		name: "services sorted, bare names only in the pod's namespace, headless and external skipped",
		pod:  podNames{Namespace: "keda", IP: "198.18.0.7", Hostname: "keda-metrics-1"},
		services: []*corev1.Service{
			svc("mlscale", "mlscale-scaler", "198.19.0.20"),
			svc("keda", "keda-operator", "198.19.0.12"),
			svc("default", "kubernetes", "198.19.0.1"),
			svc("keda", "headless", "None"),
			svc("keda", "external"),
			svc("keda", "dual", "198.19.0.13", "fd00::13"),
		},
		want: hostsHeader + "198.18.0.7\tkeda-metrics-1\n" +
			"198.19.0.1\tkubernetes.default.svc.cluster.local kubernetes.default.svc kubernetes.default\n" +
			"198.19.0.13\tdual.keda.svc.cluster.local dual.keda.svc dual.keda dual\n" +
			"fd00::13\tdual.keda.svc.cluster.local dual.keda.svc dual.keda dual\n" +
			"198.19.0.12\tkeda-operator.keda.svc.cluster.local keda-operator.keda.svc keda-operator.keda keda-operator\n" +
			"198.19.0.20\tmlscale-scaler.mlscale.svc.cluster.local mlscale-scaler.mlscale.svc mlscale-scaler.mlscale\n",
	}, {
		name:     "a service named like the pod does not take its bare name",
		pod:      podNames{Namespace: "ns", IP: "198.18.0.5", Hostname: "api"},
		services: []*corev1.Service{svc("ns", "api", "198.19.0.30")},
		want: hostsHeader + "198.18.0.5\tapi\n" +
			"198.19.0.30\tapi.ns.svc.cluster.local api.ns.svc api.ns\n",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			domain := tc.domain
			if domain == "" {
				domain = defaultDomain
			}
			got := string(renderHosts(tc.pod, tc.services, domain))
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("hosts file (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNamesOf(t *testing.T) {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web-abc"}}
	if got, want := namesOf(p, "198.18.0.9"), (podNames{Namespace: "ns", IP: "198.18.0.9", Hostname: "web-abc"}); got != want {
		t.Errorf("%+v, want %+v", got, want)
	}
	p.Spec.Hostname, p.Spec.Subdomain = "db-0", "db"
	if got, want := namesOf(p, "198.18.0.9"), (podNames{Namespace: "ns", IP: "198.18.0.9", Hostname: "db-0", Subdomain: "db"}); got != want {
		t.Errorf("%+v, want %+v", got, want)
	}
}

func TestRenderResolvConf(t *testing.T) {
	const tail = "search keda.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
	for _, tc := range []struct {
		name, host, want string
	}{
		{"no host file", "", tail},
		{"nameservers copied, the rest dropped",
			"# generated\nsearch corp.example\nnameserver 10.0.0.53\noptions edns0\nnameserver  fd00::53 \nnameserver\n",
			"nameserver 10.0.0.53\nnameserver fd00::53\n" + tail},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, string(renderResolvConf("keda", "cluster.local", []byte(tc.host)))); diff != "" {
				t.Errorf("resolv.conf (-want +got):\n%s", diff)
			}
		})
	}
}

// serviceLister is a lister over a plain indexer the test fills.
func serviceLister(t *testing.T, svcs ...*corev1.Service) (corelisters.ServiceLister, cache.Indexer) {
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	for _, s := range svcs {
		if err := idx.Add(s); err != nil {
			t.Fatal(err)
		}
	}
	return corelisters.NewServiceLister(idx), idx
}

func testNetFiles(t *testing.T, l corelisters.ServiceLister) *netFiles {
	n := newNetFiles("", t.Logf)
	n.hostResolv = filepath.Join(t.TempDir(), "missing-resolv.conf")
	n.setLister(l)
	return n
}

// A Service change rewrites the pod's hosts file on the same inode, so a
// bind mount of it shows the new content; a removed pod is left alone.
func TestRewriteKeepsInode(t *testing.T) {
	lister, idx := serviceLister(t, svc("ns", "a", "198.19.0.1"))
	n := testNetFiles(t, lister)
	dir := t.TempDir()
	if err := n.add("uid-1", podNames{Namespace: "ns", IP: "198.18.0.2", Hostname: "p"}, dir); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, hostsFile)
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	resolv, err := os.ReadFile(filepath.Join(dir, resolvFile))
	if err != nil || !strings.HasPrefix(string(resolv), "search ns.svc.cluster.local ") {
		t.Errorf("resolv.conf %q, %v", resolv, err)
	}
	if err := idx.Add(svc("other", "b", "198.19.0.2")); err != nil {
		t.Fatal(err)
	}
	n.rewriteAll()
	after, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(before, after) {
		t.Error("the rewrite replaced the file: a bind mount would keep the old one")
	}
	data, _ := os.ReadFile(path)
	if !strings.Contains(string(data), "198.19.0.2\tb.other.svc.cluster.local b.other.svc b.other\n") {
		t.Errorf("the new Service is missing:\n%s", data)
	}

	n.remove("uid-1")
	if err := idx.Add(svc("other", "c", "198.19.0.3")); err != nil {
		t.Fatal(err)
	}
	n.rewriteAll()
	if data, _ := os.ReadFile(path); strings.Contains(string(data), "198.19.0.3") {
		t.Error("a removed pod's hosts file was still rewritten")
	}
}

// Inside a container's mount namespace /etc/hosts and /etc/resolv.conf are
// the pod's files, a rewrite from outside shows inside, and the host's
// files are untouched.
func TestHostsFileInsideNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.RequireOrSkip(t, "mount namespaces need root")
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		testenv.RequireOrSkip(t, "no sh")
	}
	hostBefore, err := os.ReadFile("/etc/hosts")
	if err != nil {
		testenv.RequireOrSkip(t, "no host /etc/hosts")
	}
	lister, idx := serviceLister(t, svc("keda", "keda-operator", "198.19.0.12"))
	n := testNetFiles(t, lister)
	dir := t.TempDir()
	if err := n.add("uid-1", podNames{Namespace: "keda", IP: "198.18.0.7", Hostname: "metrics"}, dir); err != nil {
		t.Fatal(err)
	}
	lookup := "getent hosts keda-operator.keda.svc.cluster.local mlscale-scaler.mlscale.svc.cluster.local || true"
	if _, err := exec.LookPath("getent"); err != nil {
		lookup = "echo no getent"
	}
	spec, _ := json.Marshal(execSpec{
		Mounts: n.mounts(&corev1.Container{}, dir),
		Path:   sh,
		Args: []string{"-c", "cat /etc/resolv.conf; " + lookup + "; echo ---; read x; " + lookup +
			"; echo ---; (echo x >> /etc/hosts) 2>/dev/null && echo writable || echo read-only"},
	})
	cmd := helperCommand(spec)
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
		}
	})
	r := bufio.NewReader(stdout)
	section := func() string {
		var b strings.Builder
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("reading the container's output: %v (so far %q)", err, b.String())
			}
			if line == "---\n" {
				return b.String()
			}
			b.WriteString(line)
		}
	}
	first := section()
	if !strings.Contains(first, "search keda.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n") {
		t.Errorf("resolv.conf inside:\n%s", first)
	}
	if !strings.Contains(first, "no getent") {
		if !strings.Contains(first, "198.19.0.12     keda-operator.keda.svc.cluster.local") || strings.Contains(first, "mlscale-scaler") {
			t.Errorf("lookups before the new Service:\n%s", first)
		}
	}

	if err := idx.Add(svc("mlscale", "mlscale-scaler", "198.19.0.20")); err != nil {
		t.Fatal(err)
	}
	n.rewriteAll()
	io.WriteString(stdin, "go\n")
	second := section()
	if !strings.Contains(second, "no getent") && !strings.Contains(second, "198.19.0.20     mlscale-scaler.mlscale.svc.cluster.local") {
		t.Errorf("the rewritten file is not visible inside:\n%s", second)
	}
	rest, _ := io.ReadAll(r)
	if string(rest) != "read-only\n" {
		t.Errorf("writing /etc/hosts inside: %q, want read-only", rest)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("container: %v", err)
	}
	close(done)
	hostAfter, _ := os.ReadFile("/etc/hosts")
	if string(hostAfter) != string(hostBefore) {
		t.Error("the host's /etc/hosts changed")
	}
	if strings.Contains(string(hostAfter), "keda-operator") {
		t.Error("the host sees the pod's hosts file")
	}
}

// resolverContainer is what the test binary does as a container with
// MLSCALE_TEST_RESOLVER=1: resolve each name in $LOOKUP with Go's own
// resolver (as a CGO_ENABLED=0 program does) until all resolve, noting each
// in $JOURNAL, then exit 0.
func resolverContainer() {
	names := strings.Split(os.Getenv("LOOKUP"), ",")
	r := &net.Resolver{PreferGo: true}
	found := map[string]bool{}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		all := true
		for _, name := range names {
			if found[name] {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			addrs, err := r.LookupHost(ctx, name)
			cancel()
			if err != nil {
				all = false
				continue
			}
			found[name] = true
			f, _ := os.OpenFile(os.Getenv("JOURNAL"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
			fmt.Fprintf(f, "%s %s\n", name, strings.Join(addrs, ","))
			f.Close()
		}
		if all {
			os.Exit(0)
		}
	}
	os.Exit(1)
}

func init() {
	if os.Getenv("MLSCALE_TEST_RESOLVER") == "1" {
		resolverContainer()
	}
}

// A pod resolves Service names with Go's resolver, including a Service
// created after it started (its hosts file is rewritten in place).
func TestAgentPodResolvesServices(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.RequireOrSkip(t, "mount namespaces need root")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cs := fake.NewClientset(svc("ns", "early", "198.19.0.10"))
	stateDir := t.TempDir()
	a, err := New(Config{
		NodeName: "node-a", NodeIP: "127.0.0.1", KubeletPort: freePort(t),
		PodIPs: []string{"127.0.0.61"}, Client: cs,
		Images:  ImageMap{{Prefix: "test/", Binary: self}},
		WorkDir: t.TempDir(), StateDir: stateDir, RestartBackoff: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	// DNS for names not in the hosts file stays on loopback.
	a.net.hostResolv = filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(a.net.hostResolv, []byte("nameserver 127.0.0.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("the agent did not stop within 20s")
		}
	})

	journal := filepath.Join(t.TempDir(), "journal")
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "resolver", Namespace: "ns", UID: types.UID("uid-resolver")},
		Spec: corev1.PodSpec{NodeName: "node-a", RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{Name: "c", Image: "test/resolver:1", Env: []corev1.EnvVar{
				{Name: "MLSCALE_TEST_RESOLVER", Value: "1"},
				{Name: "JOURNAL", Value: journal},
				{Name: "LOOKUP", Value: "early,early.ns.svc.cluster.local,late.other.svc.cluster.local,late.other"},
			}}}},
	}
	if _, err := cs.CoreV1().Pods("ns").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	hosts := filepath.Join(stateDir, "pods", "ns_resolver_uid-resolver", hostsFile)
	var before os.FileInfo
	waitFor(t, "the pod's hosts file", func() bool {
		before, err = os.Stat(hosts)
		return err == nil
	})
	if _, err := cs.CoreV1().Services("other").Create(ctx, svc("other", "late", "198.19.0.11"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the pod to succeed", func() bool {
		p, err := cs.CoreV1().Pods("ns").Get(ctx, "resolver", metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodSucceeded
	})
	data, _ := os.ReadFile(journal)
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		name, addrs, _ := strings.Cut(line, " ")
		got[name] = addrs
	}
	want := map[string]string{
		"early": "198.19.0.10", "early.ns.svc.cluster.local": "198.19.0.10",
		"late.other.svc.cluster.local": "198.19.0.11", "late.other": "198.19.0.11",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("lookups inside the pod (-want +got):\n%s", diff)
	}
	after, err := os.Stat(hosts)
	if err != nil || !os.SameFile(before, after) {
		t.Errorf("the hosts file was replaced, not rewritten in place (%v)", err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
