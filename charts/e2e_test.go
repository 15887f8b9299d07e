//go:build e2e

package charts

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
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

	"github.com/mlscale/mlscale/internal/testenv"
	"github.com/mlscale/mlscale/manifests/crds"
)

const fieldManager = "mlscale-chart-e2e"

// TestChartServerSideDryRun applies every object the chart renders, for
// every value set of the unit tests, to a real kube-apiserver with
// server-side dry-run and strict field validation, after installing the
// KEDA and Prometheus Operator CRDs its custom resources need (cert-manager's
// are not pinned: those objects are reported, not sent). A broken object
// must be rejected, so the check is known to bite.
//
// MLSCALE_KUBECONFIG names the cluster (scripts/e2e-manifests.sh sets it);
// without it the test fails under CI=true and is skipped elsewhere.
func TestChartServerSideDryRun(t *testing.T) {
	kubeconfig := os.Getenv("MLSCALE_KUBECONFIG")
	if kubeconfig == "" {
		testenv.RequireOrSkip(t, "MLSCALE_KUBECONFIG is not set: no cluster to dry-run against (make e2e-manifests starts one)")
	}
	h := helm(t)
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatalf("loading %s: %v", kubeconfig, err)
	}
	dyn := dynamic.NewForConfigOrDie(cfg)
	cached := memory.NewMemCacheClient(discovery.NewDiscoveryClientForConfigOrDie(cfg))
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(cached)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	installCRDs(ctx, t, dyn, "keda", "prometheus-operator")
	cached.Invalidate()
	mapper.Reset()

	rendered := map[string][]*unstructured.Unstructured{}
	namespaces := map[string]bool{}
	for _, vs := range valueSets(t) {
		objs, err := Template(ctx, h, vs.release, vs.namespace, vs.args...)
		if err != nil {
			t.Fatalf("%s: %v", vs.name, err)
		}
		rendered[vs.name] = objs
		for _, o := range objs {
			if o.GetNamespace() != "" {
				namespaces[o.GetNamespace()] = true
			}
		}
	}
	// Namespaced objects can be dry-run only into namespaces that exist
	// (helm install --create-namespace makes the release's).
	for ns := range namespaces {
		u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}}
		if err := apply(ctx, dyn, mapper, u, false); err != nil {
			t.Fatalf("creating namespace %s: %v", ns, err)
		}
	}
	for _, vs := range valueSets(t) {
		t.Run(vs.name, func(t *testing.T) {
			var skipped []string
			for _, o := range rendered[vs.name] {
				where := fmt.Sprintf("%s %s/%s", o.GetKind(), o.GetNamespace(), o.GetName())
				if o.GroupVersionKind().Group == "cert-manager.io" {
					skipped = append(skipped, where)
					continue
				}
				if err := apply(ctx, dyn, mapper, o, true); err != nil {
					t.Errorf("%s rejected: %v", where, err)
				}
			}
			if len(skipped) > 0 {
				t.Logf("not sent (no cert-manager CRDs): %s", strings.Join(skipped, ", "))
			}
		})
	}
	t.Run("broken objects are rejected", func(t *testing.T) {
		objs := rendered["keda"]
		for _, tc := range []struct {
			name, kind string
			mutate     func(map[string]any)
		}{
			{"adapter with a misspelt container field", "Deployment", func(o map[string]any) {
				c := o["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any)
				c["argz"] = []any{"--v=1"}
			}},
			{"APIService without a group", "APIService", func(o map[string]any) {
				delete(o["spec"].(map[string]any), "group")
			}},
			{"TriggerAuthentication with an unknown parameter field", "TriggerAuthentication", func(o map[string]any) {
				o["spec"].(map[string]any)["secretTargetRef"].([]any)[0].(map[string]any)["secret"] = "x"
			}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				i := slices.IndexFunc(objs, func(o *unstructured.Unstructured) bool { return o.GetKind() == tc.kind })
				if i < 0 {
					t.Fatalf("no %s rendered", tc.kind)
				}
				o := objs[i].DeepCopy()
				tc.mutate(o.Object)
				err := apply(ctx, dyn, mapper, o, true)
				if err == nil {
					t.Fatal("accepted")
				}
				t.Logf("rejected as expected: %v", err)
			})
		}
	})
}

// apply sends o with server-side apply and strict field validation; with
// dryRun nothing is persisted.
func apply(ctx context.Context, dyn dynamic.Interface, mapper meta.RESTMapper, o *unstructured.Unstructured, dryRun bool) error {
	gvk := o.GroupVersionKind()
	m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return fmt.Errorf("no API for %s: %w", gvk, err)
	}
	js, err := o.MarshalJSON()
	if err != nil {
		return err
	}
	opts := metav1.PatchOptions{FieldManager: fieldManager, FieldValidation: "Strict", Force: &[]bool{true}[0]}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		ri = dyn.Resource(m.Resource).Namespace(o.GetNamespace())
	}
	_, err = ri.Patch(ctx, o.GetName(), types.ApplyPatchType, js, opts)
	return err
}

// installCRDs applies the CRDs of the given manifests/crds projects for
// real and waits until each is Established.
func installCRDs(ctx context.Context, t *testing.T, dyn dynamic.Interface, projects ...string) {
	t.Helper()
	dir := t.TempDir()
	if _, err := crds.Write(ctx, dir); err != nil {
		t.Fatalf("fetching the CRDs: %v", err)
	}
	crdGVR := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	var names []string
	for _, p := range projects {
		files, _ := filepath.Glob(filepath.Join(dir, p, "*.yaml"))
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			objs, err := Decode(b)
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			for _, o := range objs {
				if o.GetKind() != "CustomResourceDefinition" {
					continue
				}
				js, _ := o.MarshalJSON()
				if _, err := dyn.Resource(crdGVR).Patch(ctx, o.GetName(), types.ApplyPatchType, js, metav1.PatchOptions{FieldManager: fieldManager, Force: &[]bool{true}[0]}); err != nil {
					t.Fatalf("installing CRD %s from %s: %v", o.GetName(), f, err)
				}
				names = append(names, o.GetName())
			}
		}
	}
	if len(names) == 0 {
		t.Fatalf("no CRDs of %v in %s", projects, dir)
	}
	for _, n := range names {
		err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			u, err := dyn.Resource(crdGVR).Get(ctx, n, metav1.GetOptions{})
			if apierrors.IsNotFound(err) || err != nil {
				return false, nil
			}
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			for _, c := range conds {
				if cm, ok := c.(map[string]any); ok && cm["type"] == "Established" && cm["status"] == "True" {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			t.Fatalf("CRD %s not Established: %v", n, err)
		}
	}
	t.Logf("installed %d CRDs (%s)", len(names), strings.Join(projects, ", "))
}
