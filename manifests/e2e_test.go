//go:build e2e

package manifests

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/mlscale/mlscale/internal/dryrun"
)

// TestServerSideDryRun installs the real CRDs (Seldon, Istio, KEDA,
// Prometheus Operator) into a real kube-apiserver and applies every object of
// every overlay with server-side dry-run and strict field validation: the API
// server's own schemas and validation, as on EKS. Objects of
// dryrun.UnvalidatedGroups (cert-manager's, in the eks overlay) are
// reported, not sent. Deliberately broken objects must be rejected, so the
// check is known to bite.
//
// MLSCALE_KUBECONFIG names the cluster (the local cluster's harness, make e2e,
// sets it).
func TestServerSideDryRun(t *testing.T) {
	c := dryrun.Open(t, "mlscale-manifests-e2e")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	installed, err := c.InstallCRDs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("installed %d CRDs", len(installed))

	all := renderAll(t)
	if err := c.CreateNamespaces(ctx, slices.Collect(maps.Values(all))...); err != nil {
		t.Fatal(err)
	}
	for _, name := range slices.Sorted(maps.Keys(all)) {
		t.Run(name, func(t *testing.T) {
			c.ExpectAccepted(ctx, t, all[name])
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
				err := c.Apply(ctx, o, true)
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

func statusCode(err error) int32 {
	if s, ok := err.(apierrors.APIStatus); ok {
		return s.Status().Code
	}
	return 0
}
