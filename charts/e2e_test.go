//go:build e2e

package charts

import (
	"context"
	"slices"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/mlscale/mlscale/internal/dryrun"
)

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
	c := dryrun.Open(t, "mlscale-chart-e2e")
	h := helm(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	installed, err := c.InstallCRDs(ctx, "keda", "prometheus-operator")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("installed %d CRDs (keda, prometheus-operator)", len(installed))

	rendered := map[string][]*unstructured.Unstructured{}
	var all [][]*unstructured.Unstructured
	for _, vs := range valueSets(t) {
		objs, err := Template(ctx, h, vs.release, vs.namespace, vs.args...)
		if err != nil {
			t.Fatalf("%s: %v", vs.name, err)
		}
		rendered[vs.name] = objs
		all = append(all, objs)
	}
	// helm install --create-namespace makes the release's.
	if err := c.CreateNamespaces(ctx, all...); err != nil {
		t.Fatal(err)
	}
	for _, vs := range valueSets(t) {
		t.Run(vs.name, func(t *testing.T) {
			c.ExpectAccepted(ctx, t, rendered[vs.name])
		})
	}
	t.Run("broken objects are rejected", func(t *testing.T) {
		objs := rendered["keda"]
		for _, tc := range []struct {
			name, kind string
			mutate     func(map[string]any)
		}{
			{"adapter with a misspelt container field", "Deployment", func(o map[string]any) {
				ctr := o["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any)
				ctr["argz"] = []any{"--v=1"}
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
				err := c.Apply(ctx, o, true)
				if err == nil {
					t.Fatal("accepted")
				}
				t.Logf("rejected as expected: %v", err)
			})
		}
	})
}
