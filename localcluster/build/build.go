// Package cluster builds and runs the local cluster's control plane: pinned
// real Kubernetes components compiled from the Go module proxy, certificates
// generated with crypto/x509, and the processes of etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler and metrics-server on loopback.
package build

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/mod/modfile"

	"github.com/mlscale/mlscale/manifests/crds"
)

// Pinned versions of the components. The Kubernetes staging modules are
// published as v0.X.Y for kubernetes v1.X.Y.
const (
	KubernetesVersion    = "v1.37.2"
	StagingVersion       = "v0.37.2"
	EtcdVersion          = "v3.6.16"
	MetricsServerVersion = "v0.8.0"
	// KEDAVersion is the KEDA operator and metrics API server (issue 8),
	// pinned with the CRDs the manifests are checked against.
	KEDAVersion = crds.KEDAVersion
	// PrometheusAdapterVersion is what `make bench-scaling` compares with.
	PrometheusAdapterVersion = "v0.12.0"
)

// Extras are the components built only on request: KEDA for the
// ScaledObject path, prometheus-adapter for the scaling benchmark.
type Extras struct {
	// KEDAOperator and KEDAAdapter are named as in KEDA's images (/keda,
	// /keda-adapter), so its manifests' commands map onto them.
	KEDAOperator, KEDAAdapter, PrometheusAdapter string
	// KEDAConfig is a copy of the module's config/ (KEDA's own kustomize
	// tree: CRDs, RBAC, Deployments, APIService), what the local cluster
	// installs.
	KEDAConfig string
}

// Binaries are the absolute paths of the built components.
type Binaries struct {
	APIServer, ControllerManager, Scheduler, Kubectl, Etcd, MetricsServer string
}

// DefaultCacheDir is ${MLSCALE_CACHE:-$HOME/.cache/mlscale}.
func DefaultCacheDir() string {
	if d := os.Getenv("MLSCALE_CACHE"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "mlscale-cache")
	}
	return filepath.Join(home, ".cache", "mlscale")
}

// Builder compiles the components into CacheDir/<component>-<version>/bin,
// once: a directory whose binaries all exist is reused as it is.
type Builder struct {
	CacheDir string
	// GoProxy is where k8s.io/kubernetes's go.mod is read from to learn the
	// staging modules; default $GOPROXY's first entry or proxy.golang.org.
	GoProxy string
	// Nice lowers the build's CPU priority (nice -n), so a shared machine
	// stays usable; 0 disables it.
	Nice int
	Log  io.Writer
}

func (b *Builder) logf(format string, args ...any) {
	if b.Log != nil {
		fmt.Fprintf(b.Log, format+"\n", args...)
	}
}

// Cached returns the binaries if every one of them is already built.
func (b *Builder) Cached() (Binaries, bool) {
	bins := b.paths()
	for _, p := range []string{bins.APIServer, bins.ControllerManager, bins.Scheduler, bins.Kubectl, bins.Etcd, bins.MetricsServer} {
		if _, err := os.Stat(p); err != nil {
			return bins, false
		}
	}
	return bins, true
}

func (b *Builder) paths() Binaries {
	k := filepath.Join(b.CacheDir, "kubernetes-"+KubernetesVersion, "bin")
	return Binaries{
		APIServer:         filepath.Join(k, "kube-apiserver"),
		ControllerManager: filepath.Join(k, "kube-controller-manager"),
		Scheduler:         filepath.Join(k, "kube-scheduler"),
		Kubectl:           filepath.Join(k, "kubectl"),
		Etcd:              filepath.Join(b.CacheDir, "etcd-"+EtcdVersion, "bin", "etcd"),
		MetricsServer:     filepath.Join(b.CacheDir, "metrics-server-"+MetricsServerVersion, "bin", "metrics-server"),
	}
}

// ExtraPaths returns where the extra components are (or will be) built.
func (b *Builder) ExtraPaths() Extras {
	k := filepath.Join(b.CacheDir, "keda-"+KEDAVersion, "bin")
	return Extras{
		KEDAOperator:      filepath.Join(k, "keda"),
		KEDAAdapter:       filepath.Join(k, "keda-adapter"),
		KEDAConfig:        filepath.Join(b.CacheDir, "keda-"+KEDAVersion, "config"),
		PrometheusAdapter: filepath.Join(b.CacheDir, "prometheus-adapter-"+PrometheusAdapterVersion, "bin", "prometheus-adapter"),
	}
}

// BuildKEDA builds KEDA's operator and its metrics API server (cmd/adapter)
// from the module proxy: about 6.5 minutes on 2 cores the first time.
func (b *Builder) BuildKEDA(ctx context.Context) (Extras, error) {
	ex := b.ExtraPaths()
	// A module outside KEDA's does not inherit its replace directives; this
	// is the one v2.21.0 declares (an unlicensed v0.1.0 of an indirect
	// dependency).
	replace := map[string]string{"github.com/nexus-rpc/nexus-proto-annotations": "v0.1.1-0.20260629224316-835bd8d49cb4"}
	ld := "-s -w -X github.com/kedacore/keda/v2/version.Version=" + strings.TrimPrefix(KEDAVersion, "v") +
		" -X github.com/kedacore/keda/v2/version.GitCommit=" + KEDAVersion
	for _, c := range []struct{ pkg, out string }{
		{"github.com/kedacore/keda/v2/cmd/operator", ex.KEDAOperator},
		{"github.com/kedacore/keda/v2/cmd/adapter", ex.KEDAAdapter},
	} {
		if err := b.buildModule(ctx, component{
			name: "keda", version: KEDAVersion,
			require: map[string]string{"github.com/kedacore/keda/v2": KEDAVersion},
			replace: replace, pkgs: []string{c.pkg}, ldflags: ld, out: c.out,
		}); err != nil {
			return ex, err
		}
	}
	if _, err := os.Stat(filepath.Join(ex.KEDAConfig, "default", "kustomization.yaml")); err == nil {
		return ex, nil
	}
	src := filepath.Join(b.CacheDir, "keda-"+KEDAVersion, "src")
	cmd := exec.CommandContext(ctx, "go", "list", "-mod=mod", "-m", "-f", "{{.Dir}}", "github.com/kedacore/keda/v2")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "GOWORK=off")
	out, err := cmd.Output()
	if err != nil {
		return ex, fmt.Errorf("finding KEDA's module directory for its config: %w", err)
	}
	if err := copyTree(filepath.Join(strings.TrimSpace(string(out)), "config"), ex.KEDAConfig); err != nil {
		return ex, fmt.Errorf("copying KEDA's config: %w", err)
	}
	b.logf("keda %s: config copied into %s", KEDAVersion, ex.KEDAConfig)
	return ex, nil
}

// copyTree copies the regular files under src to dst, writable (the module
// cache is read-only).
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, 0o644)
	})
}

// BuildPrometheusAdapter builds sigs.k8s.io/prometheus-adapter's adapter.
func (b *Builder) BuildPrometheusAdapter(ctx context.Context) (Extras, error) {
	ex := b.ExtraPaths()
	return ex, b.buildModule(ctx, component{
		name: "prometheus-adapter", version: PrometheusAdapterVersion,
		require: map[string]string{"sigs.k8s.io/prometheus-adapter": PrometheusAdapterVersion},
		pkgs:    []string{"sigs.k8s.io/prometheus-adapter/cmd/adapter"}, out: ex.PrometheusAdapter,
	})
}

// Build builds whatever is missing and returns every binary's path.
func (b *Builder) Build(ctx context.Context) (Binaries, error) {
	return b.build(ctx, true)
}

// BuildControlPlane builds only what a cluster without metrics-server needs
// to start: the control plane and etcd (kubectl is left for later).
func (b *Builder) BuildControlPlane(ctx context.Context) (Binaries, error) {
	return b.build(ctx, false)
}

func (b *Builder) build(ctx context.Context, all bool) (Binaries, error) {
	bins := b.paths()
	if err := b.buildKubernetes(ctx, all); err != nil {
		return bins, err
	}
	etcdMain := "package main\n\nimport (\n\t\"os\"\n\n\t\"go.etcd.io/etcd/server/v3/etcdmain\"\n)\n\n// etcd's own main is in a module that is not importable; etcdmain.Main is what it calls.\nfunc main() { etcdmain.Main(os.Args) }\n"
	if err := b.buildModule(ctx, component{
		name: "etcd", version: EtcdVersion,
		require: map[string]string{"go.etcd.io/etcd/server/v3": EtcdVersion},
		files:   map[string]string{"main.go": etcdMain},
		pkgs:    []string{"."}, out: bins.Etcd,
	}); err != nil {
		return bins, err
	}
	if !all {
		return bins, nil
	}
	if err := b.buildModule(ctx, component{
		name: "metrics-server", version: MetricsServerVersion,
		require: map[string]string{"sigs.k8s.io/metrics-server": MetricsServerVersion},
		pkgs:    []string{"sigs.k8s.io/metrics-server/cmd/metrics-server"}, out: bins.MetricsServer,
	}); err != nil {
		return bins, err
	}
	return bins, nil
}

type component struct {
	name, version string
	require       map[string]string
	replace       map[string]string
	files         map[string]string
	pkgs          []string
	ldflags       string
	// out is one binary (len(pkgs)==1) or, with outDir, a directory.
	out, outDir string
	want        []string
}

func (b *Builder) buildKubernetes(ctx context.Context, withKubectl bool) error {
	bins := b.paths()
	dir := filepath.Dir(bins.APIServer)
	want := []string{bins.APIServer, bins.ControllerManager, bins.Scheduler, bins.Kubectl}
	if !withKubectl {
		want = want[:3]
	}
	if allExist(want) {
		b.logf("kubernetes %s: cached in %s", KubernetesVersion, dir)
		return nil
	}
	staging, err := b.stagingModules(ctx)
	if err != nil {
		return err
	}
	replace := map[string]string{}
	for _, m := range staging {
		replace[m] = StagingVersion
	}
	minor := strings.Split(strings.TrimPrefix(KubernetesVersion, "v"), ".")[1]
	ld := "-s -w" +
		" -X k8s.io/component-base/version.gitVersion=" + KubernetesVersion +
		" -X k8s.io/component-base/version.gitMajor=1" +
		" -X k8s.io/component-base/version.gitMinor=" + minor +
		" -X k8s.io/component-base/version.gitTreeState=clean" +
		" -X k8s.io/client-go/pkg/version.gitVersion=" + KubernetesVersion +
		" -X k8s.io/client-go/pkg/version.gitMajor=1" +
		" -X k8s.io/client-go/pkg/version.gitMinor=" + minor
	// The control plane first, kubectl (a few hundred packages of its own)
	// second: a slow machine gets to a runnable control plane sooner.
	if err := b.buildModule(ctx, component{
		name: "kubernetes", version: KubernetesVersion,
		require: map[string]string{"k8s.io/kubernetes": KubernetesVersion},
		replace: replace,
		pkgs: []string{"k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kube-controller-manager",
			"k8s.io/kubernetes/cmd/kube-scheduler"},
		ldflags: ld, outDir: dir, want: want[:3],
	}); err != nil {
		return err
	}
	if !withKubectl {
		return nil
	}
	return b.buildModule(ctx, component{
		name: "kubernetes", version: KubernetesVersion,
		require: map[string]string{"k8s.io/kubernetes": KubernetesVersion},
		replace: replace,
		pkgs:    []string{"k8s.io/kubernetes/cmd/kubectl"},
		ldflags: ld, outDir: dir, want: want[3:],
	})
}

// stagingModules reads k8s.io/kubernetes's go.mod from the module proxy and
// returns the modules it replaces with its staging directories: those are
// the ones a module outside the repository must pin to the matching version.
func (b *Builder) stagingModules(ctx context.Context) ([]string, error) {
	proxy := b.GoProxy
	if proxy == "" {
		proxy = "https://proxy.golang.org"
		if p := os.Getenv("GOPROXY"); p != "" {
			first := strings.Split(strings.Split(p, ",")[0], "|")[0]
			if strings.HasPrefix(first, "http") {
				proxy = first
			}
		}
	}
	url := strings.TrimSuffix(proxy, "/") + "/k8s.io/kubernetes/@v/" + KubernetesVersion + ".mod"
	b.logf("kubernetes %s: reading the staging modules from %s", KubernetesVersion, url)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("reading k8s.io/kubernetes go.mod: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reading k8s.io/kubernetes go.mod: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("reading k8s.io/kubernetes go.mod: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("reading k8s.io/kubernetes go.mod from %s: %s", url, resp.Status)
	}
	return StagingModules(data)
}

// StagingModules parses a k8s.io/kubernetes go.mod and returns the modules it
// replaces with local ./staging paths and also requires (the sample modules
// are replaced but never required, and are not all published).
func StagingModules(gomod []byte) ([]string, error) {
	f, err := modfile.Parse("go.mod", gomod, nil)
	if err != nil {
		return nil, fmt.Errorf("parsing k8s.io/kubernetes go.mod: %w", err)
	}
	required := map[string]bool{}
	for _, r := range f.Require {
		required[r.Mod.Path] = true
	}
	var mods []string
	for _, r := range f.Replace {
		if strings.HasPrefix(r.New.Path, "./staging/") && required[r.Old.Path] {
			mods = append(mods, r.Old.Path)
		}
	}
	if len(mods) == 0 {
		return nil, errors.New("k8s.io/kubernetes go.mod replaces no staging modules")
	}
	return mods, nil
}

func allExist(paths []string) bool {
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			return false
		}
	}
	return true
}

// buildModule writes a throwaway module under CacheDir/<name>-<version>/src
// and builds the packages with `go build -mod=mod`, which resolves the
// requirements and writes go.sum on the way.
func (b *Builder) buildModule(ctx context.Context, c component) error {
	base := filepath.Join(b.CacheDir, c.name+"-"+c.version)
	want := c.want
	if want == nil {
		want = []string{c.out}
	}
	if allExist(want) {
		b.logf("%s %s: cached in %s", c.name, c.version, filepath.Dir(want[0]))
		return nil
	}
	src := filepath.Join(base, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return fmt.Errorf("building %s: %w", c.name, err)
	}
	var mod strings.Builder
	fmt.Fprintf(&mod, "// Generated by mlscale's localcluster/build: a throwaway module to build %s %s.\nmodule mlscale.local/build/%s\n\ngo 1.26.0\n\n", c.name, c.version, c.name)
	for _, p := range slices.Sorted(maps.Keys(c.require)) {
		fmt.Fprintf(&mod, "require %s %s\n", p, c.require[p])
	}
	if len(c.replace) > 0 {
		mod.WriteString("\nreplace (\n")
		for _, p := range slices.Sorted(maps.Keys(c.replace)) {
			fmt.Fprintf(&mod, "\t%s => %s %s\n", p, p, c.replace[p])
		}
		mod.WriteString(")\n")
	}
	files := map[string]string{"go.mod": mod.String()}
	for n, s := range c.files {
		files[n] = s
	}
	for n, s := range files {
		if err := os.WriteFile(filepath.Join(src, n), []byte(s), 0o644); err != nil {
			return fmt.Errorf("building %s: %w", c.name, err)
		}
	}
	out := c.out
	if c.outDir != "" {
		out = c.outDir + string(filepath.Separator)
	}
	if err := os.MkdirAll(filepath.Dir(filepath.Clean(out+"x")), 0o755); err != nil {
		return fmt.Errorf("building %s: %w", c.name, err)
	}
	// Download first so the two phases are told apart in the progress lines.
	if err := b.run(ctx, c.name, src, "downloading modules", []string{"go", "mod", "download"}); err != nil {
		// go mod download with an incomplete go.sum is not enough; `go build
		// -mod=mod` below resolves what is missing anyway.
		b.logf("%s: go mod download: %v (continuing with the build)", c.name, err)
	}
	args := []string{"go", "build", "-mod=mod", "-trimpath", "-v", "-o", out}
	if c.ldflags != "" {
		args = append(args, "-ldflags="+c.ldflags)
	}
	args = append(args, c.pkgs...)
	start := time.Now()
	if err := b.run(ctx, c.name, src, "compiling "+strings.Join(short(c.pkgs), " "), args); err != nil {
		return err
	}
	b.logf("%s %s: built in %s into %s", c.name, c.version, time.Since(start).Round(time.Second), filepath.Dir(want[0]))
	return nil
}

func short(pkgs []string) []string {
	out := make([]string, len(pkgs))
	for i, p := range pkgs {
		out[i] = filepath.Base(p)
	}
	return out
}

// run runs a go command, printing a progress line every 20 s with the number
// of packages compiled so far, and the tail of its output if it fails.
func (b *Builder) run(ctx context.Context, name, dir, what string, args []string) error {
	if b.Nice > 0 {
		if nice, err := exec.LookPath("nice"); err == nil {
			args = append([]string{nice, "-n", fmt.Sprint(b.Nice)}, args...)
		}
	}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-buildvcs=false", "GOWORK=off")
	pr, pw := io.Pipe()
	cmd.Stdout = pw
	cmd.Stderr = pw
	b.logf("%s: %s (the first build takes minutes; cached afterwards)", name, what)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("building %s: starting %s: %w", name, args[0], err)
	}
	var lines atomic.Int64
	tail := make([]string, 0, 40)
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			lines.Add(1)
			if len(tail) == cap(tail) {
				tail = tail[1:]
			}
			tail = append(tail, sc.Text())
		}
	}()
	start := time.Now()
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait(); pw.Close() }()
	tick := time.NewTicker(20 * time.Second)
	defer tick.Stop()
	for {
		select {
		case err := <-waitErr:
			<-done
			if err != nil {
				return fmt.Errorf("building %s: %s failed: %w\n%s", name, strings.Join(args, " "), err, strings.Join(tail, "\n"))
			}
			return nil
		case <-tick.C:
			b.logf("%s: still %s, %s elapsed, %d packages so far", name, what, time.Since(start).Round(time.Second), lines.Load())
		}
	}
}
