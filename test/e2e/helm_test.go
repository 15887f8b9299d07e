//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/mlscale/mlscale/charts"
	"github.com/mlscale/mlscale/manifests"
)

// TestHelmInstall installs charts/mlscale with the real helm into the local
// cluster, next to the `local` overlay's model server and its
// requests-per-second HPA, and shows the adapter it deploys serving through
// the kube-apiserver's aggregator: custom.metrics.k8s.io agrees with the
// load (sent through the gateway and the chart's activator), and the real
// HPA controller computes from it. With KEDA in the
// cluster, the chart's externalMetrics switch (auto, with keda.enabled)
// leaves external.metrics.k8s.io to KEDA. An upgrade keeps the generated CA;
// the uninstall removes the APIServices and leaves KEDA's alone.
func TestHelmInstall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	h, err := charts.HelmBinary()
	if err != nil {
		t.Fatal(err) // make e2e builds it (deps-helm)
	}
	dyn := dynamicClient(t)
	withKEDA := os.Getenv("MLSCALE_E2E_NO_KEDA") != "1"
	if withKEDA {
		waitReady(t, ctx, "keda", "app=keda-metrics-apiserver", 1, 3*time.Minute)
		ensureKEDAMetricsAPI(t, ctx, dyn)
	}

	deployModelOnly(t, ctx)

	values := filepath.Join(env.repo, "test", "e2e", "testdata", "helm-local.yaml")
	helmArgs := func(verb string) []string {
		return []string{verb, "mlscale", charts.Dir(), "--kubeconfig", env.kubeconfig, "--namespace", "mlscale",
			"-f", values, "--set", "keda.enabled=" + strconv.FormatBool(withKEDA), "--wait", "--timeout", "3m"}
	}
	start := time.Now()
	out, err := charts.Run(ctx, h, append(helmArgs("install"), "--create-namespace")...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("helm install: %s to deployed and Ready; it printed:\n%s", time.Since(start).Round(time.Second), out)
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if out, err := charts.Run(cctx, h, "uninstall", "mlscale", "--kubeconfig", env.kubeconfig, "--namespace", "mlscale", "--wait", "--timeout", "2m"); err != nil {
			t.Errorf("%v\n%s", err, out)
		}
		for _, name := range []string{"v1beta1.custom.metrics.k8s.io", "v1beta2.custom.metrics.k8s.io"} {
			if _, err := dyn.Resource(apiServices).Get(cctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				t.Errorf("after helm uninstall, APIService %s: %v (want NotFound)", name, err)
			}
		}
		if withKEDA {
			waitAPIService(t, cctx, dyn, "v1beta1.external.metrics.k8s.io", "keda", "keda-metrics-apiserver")
		}
		if err := env.client.CoreV1().Namespaces().Delete(cctx, "mlscale", metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("deleting namespace mlscale: %v", err)
		}
		waitNamespaceGone(t, cctx, "mlscale")
	})

	waitReady(t, ctx, "mlscale", "app.kubernetes.io/name=adapter,app.kubernetes.io/instance=mlscale", 1, 2*time.Minute)
	waitReady(t, ctx, "mlscale", "app.kubernetes.io/name=scaler,app.kubernetes.io/instance=mlscale", 1, 2*time.Minute)
	waitReady(t, ctx, "mlscale", "app.kubernetes.io/name=activator,app.kubernetes.io/instance=mlscale", 2, 2*time.Minute)
	waitAPIService(t, ctx, dyn, "v1beta2.custom.metrics.k8s.io", "mlscale", "mlscale-adapter")
	waitAPIService(t, ctx, dyn, "v1beta1.custom.metrics.k8s.io", "mlscale", "mlscale-adapter")
	if withKEDA {
		// The chart registered no external APIService: KEDA's is untouched.
		waitAPIService(t, ctx, dyn, "v1beta1.external.metrics.k8s.io", "keda", "keda-metrics-apiserver")
	} else {
		waitAPIService(t, ctx, dyn, "v1beta1.external.metrics.k8s.io", "mlscale", "mlscale-adapter")
	}

	waitReady(t, ctx, "model", modelSelector, 1, 2*time.Minute)
	waitEndpoints(t, ctx, "model", "iris-model-autoscale", 1)
	load := &openLoop{}
	load.rate.Store(8)
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer func() { stopLoad(); load.wg.Wait() }()
	load.run(loadCtx, onePrediction("/seldon/model/iris-model-autoscale/api/v1.0/predictions"))

	const raw = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/model/pods/*/requests_per_second"
	got := waitMetricNear(t, ctx, raw, "", 8, 2*time.Minute)
	t.Logf("through the aggregator to the chart's adapter: %.2f requests/s for an 8/s load", got)
	if !withKEDA {
		ext := "/apis/external.metrics.k8s.io/v1beta1/namespaces/model/requests_per_second"
		got := waitMetricNear(t, ctx, ext, modelSelector, 8, time.Minute)
		t.Logf("external.metrics.k8s.io: %.2f", got)
	}
	// The real HPA controller reads it (the chart's RBAC for kube-system/horizontal-pod-autoscaler).
	waitScalingActive(t, ctx, "iris-model-autoscale", 2*time.Minute)

	// An upgrade re-renders the certificates: the CA must be the one the
	// install made (looked up), or KEDA and the aggregator would lose trust.
	caBefore := secretData(t, ctx, "mlscale", "mlscale-ca", "tls.crt")
	if out, err := charts.Run(ctx, h, helmArgs("upgrade")...); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if caAfter := secretData(t, ctx, "mlscale", "mlscale-ca", "tls.crt"); string(caAfter) != string(caBefore) {
		t.Error("helm upgrade replaced the generated CA")
	}
	for _, name := range []string{"v1beta1.custom.metrics.k8s.io", "v1beta2.custom.metrics.k8s.io"} {
		a, err := dyn.Resource(apiServices).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if b, _, _ := unstructured.NestedString(a.Object, "spec", "caBundle"); b == "" {
			t.Errorf("APIService %s has no caBundle after the upgrade", name)
		}
	}
	waitReady(t, ctx, "mlscale", "app.kubernetes.io/name=adapter,app.kubernetes.io/instance=mlscale", 1, 2*time.Minute)
	got = waitMetricNear(t, ctx, raw, "", 8, 2*time.Minute)
	t.Logf("after helm upgrade: %.2f requests/s", got)

	stopLoad()
	load.wg.Wait()
	if load.failed.Load() != 0 {
		t.Errorf("%d of %d requests failed; first: %v", load.failed.Load(), load.sent.Load(), load.firstErr.Load())
	}
}

// deployModelOnly applies the `local` overlay's model namespace (the model
// server, its Service and HPA) without its adapter and scaler, which the
// chart provides; the cleanup deletes them and waits for the namespace.
func deployModelOnly(t *testing.T, ctx context.Context) {
	t.Helper()
	all, err := manifests.Build(filesys.MakeFsOnDisk(), env.repo+"/manifests/overlays/local")
	if err != nil {
		t.Fatalf("rendering the local overlay (did `make certs` run?): %v", err)
	}
	var objs []*unstructured.Unstructured
	for _, o := range all {
		if (o.GetKind() == "Namespace" && o.GetName() == "model") || (o.GetNamespace() == "model" && o.GetKind() != "Secret") {
			objs = append(objs, o)
		}
	}
	yaml, err := manifests.YAML(objs)
	if err != nil {
		t.Fatal(err)
	}
	kubectl(t, ctx, yaml, "apply", "--server-side", "--force-conflicts", "-f", "-")
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		kubectl(t, cctx, yaml, "delete", "--ignore-not-found", "--wait=false", "-f", "-")
		waitNamespaceGone(t, cctx, "model")
	})
}

// waitMetricNear reads a custom or external metrics list at path (with a
// labelSelector, if not empty) until the sum of its values is within 10% of
// want, and returns the last sum.
func waitMetricNear(t *testing.T, ctx context.Context, path, selector string, want float64, timeout time.Duration) float64 {
	t.Helper()
	deadline := time.Now().Add(timeout)
	sum, lastErr := -1.0, error(nil)
	for time.Now().Before(deadline) {
		req := env.client.CoreV1().RESTClient().Get().AbsPath(path)
		if selector != "" {
			req = req.Param("labelSelector", selector)
		}
		data, err := req.DoRaw(ctx)
		lastErr = err
		if err == nil {
			var list struct {
				Items []struct {
					Value string `json:"value"`
				} `json:"items"`
			}
			if err := json.Unmarshal(data, &list); err == nil && len(list.Items) > 0 {
				sum = 0
				for _, it := range list.Items {
					if q, err := parseQuantity(it.Value); err == nil {
						sum += q
					}
				}
				if math.Abs(sum-want)/want <= 0.10 {
					return sum
				}
			}
		}
		time.Sleep(2 * time.Second)
	}
	t.Fatalf("%s: %.2f, want %.2f within 10%% (last error: %v)", path, sum, want, lastErr)
	return sum
}

func secretData(t *testing.T, ctx context.Context, ns, name, key string) []byte {
	t.Helper()
	s, err := env.client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("Secret %s/%s: %v", ns, name, err)
	}
	if len(s.Data[key]) == 0 {
		t.Fatalf("Secret %s/%s has no %s", ns, name, key)
	}
	return s.Data[key]
}
