//go:build e2e

package e2e

import (
	"context"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/mlscale/mlscale/manifests"
)

// deployOverlay renders manifests/overlays/<name> as `kubectl apply -k`
// would and applies it; the cleanup deletes every object it created,
// cluster-scoped ones (APIServices, ClusterRoles) included, and waits for
// its namespaces to be gone, so the next test starts from a clean cluster.
func deployOverlay(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	objs, err := manifests.Build(filesys.MakeFsOnDisk(), env.repo+"/manifests/overlays/"+name)
	if err != nil {
		t.Fatalf("rendering the %s overlay (did `make certs` run?): %v", name, err)
	}
	yaml, err := manifests.YAML(objs)
	if err != nil {
		t.Fatal(err)
	}
	kubectl(t, ctx, yaml, "apply", "--server-side", "--force-conflicts", "-f", "-")
	var namespaces []string
	for _, o := range objs {
		if o.GetKind() == "Namespace" {
			namespaces = append(namespaces, o.GetName())
		}
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		kubectl(t, cctx, yaml, "delete", "--ignore-not-found", "--wait=false", "-f", "-")
		for _, ns := range namespaces {
			waitNamespaceGone(t, cctx, ns)
		}
	})
}

// waitNamespaceGone waits (within ctx) for a deleted namespace to be gone.
func waitNamespaceGone(t *testing.T, ctx context.Context, ns string) {
	for ctx.Err() == nil {
		if _, err := env.client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Errorf("namespace %s still there after its deletion", ns)
}
