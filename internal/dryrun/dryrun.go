// Package dryrun checks objects against a real kube-apiserver the way
// `kubectl apply --server-side --dry-run=server --validate=strict` does: the
// API server's own schemas and validation, including those of the CRDs
// manifests/crds pins, which it installs first. The kustomize overlays'
// and the Helm chart's end-to-end tests (-tags e2e, make e2e-manifests)
// share it.
package dryrun

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/kustomize/kyaml/kio"

	"github.com/mlscale/mlscale/internal/testenv"
	"github.com/mlscale/mlscale/manifests/crds"
)

// KubeconfigEnv names the cluster to check against; make e2e-manifests
// (scripts/e2e-manifests.sh) sets it to the local cluster's.
const KubeconfigEnv = "MLSCALE_KUBECONFIG"

// UnvalidatedGroups are API groups whose CRDs manifests/crds does not pin,
// so the API server cannot check their objects: only cert-manager's are
// rendered (components/cert-manager in the eks overlay, the chart's
// certificates). Their objects are reported as not sent, never dropped
// silently.
var UnvalidatedGroups = []string{"cert-manager.io"}

// Cluster is a connection to the API server objects are checked against.
type Cluster struct {
	dyn          dynamic.Interface
	cached       discovery.CachedDiscoveryInterface
	mapper       *restmapper.DeferredDiscoveryRESTMapper
	fieldManager string
}

// Open connects to the cluster KubeconfigEnv names, applying as
// fieldManager. Without KubeconfigEnv the test fails under CI=true and is
// skipped elsewhere (testenv.RequireOrSkip).
func Open(t testing.TB, fieldManager string) *Cluster {
	t.Helper()
	kubeconfig := os.Getenv(KubeconfigEnv)
	if kubeconfig == "" {
		testenv.RequireOrSkip(t, KubeconfigEnv+" is not set: no cluster to dry-run against (make e2e-manifests starts one)")
	}
	c, err := Connect(kubeconfig, fieldManager)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Connect connects to the cluster of kubeconfig, applying as fieldManager.
func Connect(kubeconfig, fieldManager string) (*Cluster, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", kubeconfig, err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("a client for %s: %w", kubeconfig, err)
	}
	disco, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("a discovery client for %s: %w", kubeconfig, err)
	}
	cached := memory.NewMemCacheClient(disco)
	return &Cluster{dyn: dyn, cached: cached, mapper: restmapper.NewDeferredDiscoveryRESTMapper(cached), fieldManager: fieldManager}, nil
}

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// InstallCRDs applies, for real, the CRDs of the given manifests/crds
// projects (every project when none is given: Seldon, Istio, KEDA,
// Prometheus Operator), waits until each is Established so objects of
// those kinds can be checked, and returns their names.
func (c *Cluster) InstallCRDs(ctx context.Context, projects ...string) ([]string, error) {
	dir, err := os.MkdirTemp("", "mlscale-dryrun-crds-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	files, err := crds.Write(ctx, dir)
	if err != nil {
		return nil, fmt.Errorf("fetching the CRDs: %w", err)
	}
	var names []string
	for _, f := range files {
		project := filepath.Base(filepath.Dir(f))
		if len(projects) > 0 && !slices.Contains(projects, project) {
			continue
		}
		defs, err := crdsIn(f)
		if err != nil {
			return nil, err
		}
		for _, d := range defs {
			if _, err := c.dyn.Resource(crdGVR).Patch(ctx, d.name, types.ApplyPatchType, d.json, c.patchOptions(false)); err != nil {
				return nil, fmt.Errorf("installing CRD %s from %s: %w", d.name, f, err)
			}
			names = append(names, d.name)
		}
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("no CRDs of %v in manifests/crds", projects)
	}
	for _, n := range names {
		if err := c.waitEstablished(ctx, n); err != nil {
			return nil, err
		}
	}
	// The new kinds are served now: map them afresh.
	c.cached.Invalidate()
	c.mapper.Reset()
	return names, nil
}

func (c *Cluster) waitEstablished(ctx context.Context, name string) error {
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		u, err := c.dyn.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, cond := range conds {
			if cm, ok := cond.(map[string]any); ok && cm["type"] == "Established" && cm["status"] == "True" {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("CRD %s not Established: %w", name, err)
	}
	return nil
}

// crd is one CustomResourceDefinition as JSON, the body of its apply.
type crd struct {
	name string
	json []byte
}

// crdsIn reads the CustomResourceDefinitions of a (multi-document) YAML
// file; other kinds are passed over.
func crdsIn(path string) ([]crd, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	nodes, err := kio.FromBytes(b)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	var out []crd
	for _, n := range nodes {
		if n.GetKind() != "CustomResourceDefinition" {
			continue
		}
		js, err := n.MarshalJSON()
		if err != nil {
			return nil, fmt.Errorf("%s: CRD %s: %w", path, n.GetName(), err)
		}
		out = append(out, crd{n.GetName(), js})
	}
	return out, nil
}

// CreateNamespaces creates, for real, every namespace an object of objs is
// in: namespaced objects can be dry-run only into namespaces that exist.
// The namespaces hold nothing.
func (c *Cluster) CreateNamespaces(ctx context.Context, objs ...[]*unstructured.Unstructured) error {
	seen := map[string]bool{}
	for _, list := range objs {
		for _, o := range list {
			ns := o.GetNamespace()
			if ns == "" || seen[ns] {
				continue
			}
			seen[ns] = true
			u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}}
			if err := c.Apply(ctx, u, false); err != nil {
				return fmt.Errorf("creating namespace %s: %w", ns, err)
			}
		}
	}
	return nil
}

// ExpectAccepted dry-runs every object of objs and fails t once for each
// the API server rejects, naming it; the objects not sent (their group is
// one of UnvalidatedGroups) are logged.
func (c *Cluster) ExpectAccepted(ctx context.Context, t testing.TB, objs []*unstructured.Unstructured) {
	t.Helper()
	rejected, notSent := c.dryRunAll(ctx, objs)
	for _, err := range rejected {
		t.Error(err)
	}
	if len(notSent) > 0 {
		t.Logf("not sent (no pinned CRD for their group): %s", strings.Join(notSent, ", "))
	}
}

// dryRunAll dry-runs every object of objs (Apply with dryRun) and returns
// one error per object the API server rejected, naming the object, and the
// objects not sent because their group is one of UnvalidatedGroups.
func (c *Cluster) dryRunAll(ctx context.Context, objs []*unstructured.Unstructured) (rejected []error, notSent []string) {
	for _, o := range objs {
		where := fmt.Sprintf("%s %s/%s", o.GetKind(), o.GetNamespace(), o.GetName())
		if slices.Contains(UnvalidatedGroups, o.GroupVersionKind().Group) {
			notSent = append(notSent, where)
			continue
		}
		if err := c.Apply(ctx, o, true); err != nil {
			rejected = append(rejected, fmt.Errorf("%s rejected: %w", where, err))
		}
	}
	return rejected, notSent
}

// Apply sends o with server-side apply and strict field validation, so
// unknown and duplicate fields are errors, not warnings; with dryRun
// nothing is persisted.
func (c *Cluster) Apply(ctx context.Context, o *unstructured.Unstructured, dryRun bool) error {
	gvk := o.GroupVersionKind()
	m, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return fmt.Errorf("no API for %s: %w", gvk, err)
	}
	js, err := o.MarshalJSON()
	if err != nil {
		return fmt.Errorf("encoding %s %s: %w", gvk.Kind, o.GetName(), err)
	}
	opts := c.patchOptions(dryRun)
	opts.FieldValidation = "Strict"
	var ri dynamic.ResourceInterface = c.dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		ri = c.dyn.Resource(m.Resource).Namespace(o.GetNamespace())
	}
	_, err = ri.Patch(ctx, o.GetName(), types.ApplyPatchType, js, opts)
	return err
}

func (c *Cluster) patchOptions(dryRun bool) metav1.PatchOptions {
	force := true
	opts := metav1.PatchOptions{FieldManager: c.fieldManager, Force: &force}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	return opts
}
