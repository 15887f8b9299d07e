//go:build e2e

package manifests

import (
	"context"
	"encoding/json"
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
	"sigs.k8s.io/kustomize/kyaml/kio"

	"github.com/mlscale/mlscale/internal/testenv"
)

const fieldManager = "mlscale-manifests-e2e"

// unvalidatedGroups are API groups whose CRDs manifests/crds does not carry, so
// the API server cannot check their objects. Only cert-manager's are
// rendered (components/cert-manager, in the eks overlay); they are reported,
// not silently dropped.
var unvalidatedGroups = []string{"cert-manager.io"}

// TestServerSideDryRun installs the real CRDs (Seldon, Istio, KEDA,
// Prometheus Operator) into a real kube-apiserver and applies every object of
// every overlay with server-side dry-run and strict field validation: the API
// server's own schemas and validation, as on EKS. Deliberately broken objects
// must be rejected, so the check is known to bite.
//
// MLSCALE_KUBECONFIG names the cluster (the local cluster's harness, make e2e,
// sets it).
func TestServerSideDryRun(t *testing.T) {
	kubeconfig := os.Getenv("MLSCALE_KUBECONFIG")
	if kubeconfig == "" {
		testenv.RequireOrSkip(t, "MLSCALE_KUBECONFIG is not set: no cluster to dry-run against (make e2e-manifests starts one)")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatalf("loading %s: %v", kubeconfig, err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	disco, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cached := memory.NewMemCacheClient(disco)
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(cached)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	crdDir := installCRDs(ctx, t, dyn)
	cached.Invalidate()
	mapper.Reset()

	all := renderAll(t)
	// Namespaced objects can be dry-run only into namespaces that exist:
	// create the ones the overlays use (for real; they hold nothing).
	nss := map[string]bool{}
	for _, objs := range all {
		for _, o := range objs {
			if o.GetNamespace() != "" {
				nss[o.GetNamespace()] = true
			}
		}
	}
	for ns := range nss {
		u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}}
		if err := apply(ctx, dyn, mapper, u, false); err != nil {
			t.Fatalf("creating namespace %s: %v", ns, err)
		}
	}

	names := make([]string, 0, len(all))
	for n := range all {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			var skipped []string
			for _, o := range all[name] {
				gvk := o.GroupVersionKind()
				if slices.Contains(unvalidatedGroups, gvk.Group) {
					skipped = append(skipped, fmt.Sprintf("%s %s/%s", gvk.Kind, o.GetNamespace(), o.GetName()))
					continue
				}
				if err := apply(ctx, dyn, mapper, o, true); err != nil {
					t.Errorf("%s %s/%s rejected: %v", gvk.Kind, o.GetNamespace(), o.GetName(), err)
				}
			}
			if len(skipped) > 0 {
				t.Logf("not validated (no CRD in %s): %s", crdDir, strings.Join(skipped, ", "))
			}
		})
	}

	t.Run("broken objects are rejected", func(t *testing.T) {
		objs := all["local"]
		keda := all["keda"]
		seldon := all["seldon"]
		for _, tc := range []struct {
			name   string
			obj    *unstructured.Unstructured
			mutate func(o *unstructured.Unstructured)
		}{
			{"Deployment with a string replica count", find(objs, "Deployment", "model", "iris-model-autoscale"), func(o *unstructured.Unstructured) {
				unstructured.SetNestedField(o.Object, "two", "spec", "replicas")
			}},
			{"Deployment with a misspelt field", find(objs, "Deployment", "model", "iris-model-autoscale"), func(o *unstructured.Unstructured) {
				unstructured.SetNestedField(o.Object, int64(30), "spec", "template", "spec", "terminationGracePeriod")
			}},
			{"HPA with minReplicas above maxReplicas", find(objs, "HorizontalPodAutoscaler", "model", "iris-model-autoscale"), func(o *unstructured.Unstructured) {
				unstructured.SetNestedField(o.Object, int64(50), "spec", "minReplicas")
			}},
			{"SeldonDeployment hpaSpec with a field the CRD lacks", find(seldon, "SeldonDeployment", "model", "iris-model-autoscale"), func(o *unstructured.Unstructured) {
				preds, _, _ := unstructured.NestedSlice(o.Object, "spec", "predictors")
				cs := preds[0].(map[string]any)["componentSpecs"].([]any)[0].(map[string]any)
				cs["hpaSpec"].(map[string]any)["targetCPUUtilizationPercentage"] = int64(40)
				unstructured.SetNestedSlice(o.Object, preds, "spec", "predictors")
			}},
			{"ScaledObject without scaleTargetRef", find(keda, "ScaledObject", "model", "iris-model-autoscale"), func(o *unstructured.Unstructured) {
				unstructured.RemoveNestedField(o.Object, "spec", "scaleTargetRef")
			}},
			{"APIService with both caBundle and insecureSkipTLSVerify", find(objs, "APIService", "", "v1beta1.custom.metrics.k8s.io"), func(o *unstructured.Unstructured) {
				unstructured.SetNestedField(o.Object, true, "spec", "insecureSkipTLSVerify")
			}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if tc.obj == nil {
					t.Fatal("the object to break is not in the overlay")
				}
				o := tc.obj.DeepCopy()
				tc.mutate(o)
				err := apply(ctx, dyn, mapper, o, true)
				if err == nil {
					t.Fatal("accepted")
				}
				// Validation answers 422 Invalid; a type or field the schema
				// lacks fails earlier, in server-side apply's conversion to the
				// schema's typed object, which this API server reports as an
				// internal error naming the field: that is the schema's verdict too.
				schemaTyped := apierrors.IsInternalError(err) && strings.Contains(err.Error(), "failed to create typed patch object")
				if !apierrors.IsInvalid(err) && !apierrors.IsBadRequest(err) && !schemaTyped {
					t.Errorf("rejected for another reason than validation (%s, code %d): %v", apierrors.ReasonForError(err), statusCode(err), err)
				}
				t.Logf("rejected as expected: %v", err)
			})
		}
	})
}

// apply server-side applies o (dry-run when dryRun) with strict field
// validation, so unknown and duplicate fields are errors, not warnings.
func apply(ctx context.Context, dyn dynamic.Interface, mapper meta.RESTMapper, o *unstructured.Unstructured, dryRun bool) error {
	gvk := o.GroupVersionKind()
	m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return fmt.Errorf("mapping %s: %w", gvk, err)
	}
	data, err := json.Marshal(o.Object)
	if err != nil {
		return err
	}
	opts := metav1.PatchOptions{FieldManager: fieldManager, Force: ptr(true), FieldValidation: "Strict"}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		ri = dyn.Resource(m.Resource).Namespace(o.GetNamespace())
	}
	_, err = ri.Patch(ctx, o.GetName(), types.ApplyPatchType, data, opts)
	return err
}

func ptr[T any](v T) *T { return &v }

// installCRDs applies every CRD of crdsDir for real, waits until each is
// Established and returns the directory.
func installCRDs(ctx context.Context, t *testing.T, dyn dynamic.Interface) string {
	t.Helper()
	dir := crdsDir(t)
	crdGVR := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	var names []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".yaml") {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		nodes, err := kio.FromBytes(b)
		if err != nil {
			return fmt.Errorf("reading %s: %w", p, err)
		}
		for _, n := range nodes {
			if n.GetKind() != "CustomResourceDefinition" {
				continue
			}
			js, err := n.MarshalJSON()
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			_, err = dyn.Resource(crdGVR).Patch(ctx, n.GetName(), types.ApplyPatchType, js, metav1.PatchOptions{FieldManager: fieldManager, Force: ptr(true)})
			if err != nil {
				return fmt.Errorf("installing CRD %s from %s: %w", n.GetName(), p, err)
			}
			names = append(names, n.GetName())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(names) == 0 {
		t.Fatalf("no CRDs in %s", dir)
	}
	for _, n := range names {
		err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			u, err := dyn.Resource(crdGVR).Get(ctx, n, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			for _, c := range conds {
				cm := c.(map[string]any)
				if cm["type"] == "Established" && cm["status"] == "True" {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			t.Fatalf("CRD %s not Established: %v", n, err)
		}
	}
	t.Logf("installed %d CRDs from %s", len(names), dir)
	return dir
}

func statusCode(err error) int32 {
	if s, ok := err.(apierrors.APIStatus); ok {
		return s.Status().Code
	}
	return 0
}
