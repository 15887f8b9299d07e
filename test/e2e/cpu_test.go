//go:build e2e

package e2e

import (
	"context"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	metricsclient "k8s.io/metrics/pkg/client/clientset/versioned"
)

// TestCPUHPAThroughMetricsServer is the seed's CPU variant: heavy rows make
// the model server busy, the node agent's /metrics/resource reports it,
// metrics-server serves it through the aggregation layer (so `kubectl top`
// works), and the real HPA controller scales out. No request fails.
func TestCPUHPAThroughMetricsServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	deployActivator(t, ctx) // the request path, as the overlays deploy it
	manifest, err := os.ReadFile("testdata/cpu-hpa.yaml")
	if err != nil {
		t.Fatal(err)
	}
	kubectl(t, ctx, manifest, "apply", "-f", "-")
	t.Cleanup(func() {
		_ = env.client.CoreV1().Namespaces().Delete(context.Background(), "e2e-cpu", metav1.DeleteOptions{})
	})
	const ns, sel, path = "e2e-cpu", "app=iris", "/seldon/e2e-cpu/iris/api/v1.0/predictions"
	waitReady(t, ctx, ns, sel, 1, 90*time.Second)
	waitEndpoints(t, ctx, ns, "iris", 1)

	// The seed's heavy rows: many rows per request, a few clients.
	row := []float64{5.1, 3.5, 1.4, 0.2}
	rows := make([][]float64, 2000)
	for i := range rows {
		rows[i] = row
	}
	var sent, failed atomic.Int64
	var firstErr atomic.Value
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	var wg sync.WaitGroup
	for w := 0; w < 3; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for loadCtx.Err() == nil {
				err := predictRows(loadCtx, path, rows)
				if loadCtx.Err() != nil {
					return
				}
				sent.Add(1)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
			}
		}()
	}

	cfg, err := clientcmd.BuildConfigFromFlags("", env.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	mc := metricsclient.NewForConfigOrDie(cfg)
	// metrics-server needs two scrapes (15 s apart) for a rate.
	var cpu resource.Quantity
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		pm, err := mc.MetricsV1beta1().PodMetricses(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err == nil && len(pm.Items) > 0 && len(pm.Items[0].Containers) > 0 {
			cpu = pm.Items[0].Containers[0].Usage["cpu"]
			if cpu.MilliValue() > 0 {
				break
			}
		}
		time.Sleep(2 * time.Second)
	}
	t.Logf("metrics.k8s.io: pod CPU %s under load", cpu.String())
	if cpu.MilliValue() < 100 {
		t.Fatalf("metrics.k8s.io reports %s CPU for a loaded model server", cpu.String())
	}

	// 40% of 500m is 200m: the load is above it, so the HPA must scale out.
	deadline = time.Now().Add(3 * time.Minute)
	var replicas int32
	for time.Now().Before(deadline) {
		h, err := env.client.AutoscalingV2().HorizontalPodAutoscalers(ns).Get(ctx, "iris", metav1.GetOptions{})
		if err == nil {
			replicas = h.Status.DesiredReplicas
			if replicas >= 2 {
				break
			}
		}
		time.Sleep(2 * time.Second)
	}
	if replicas < 2 {
		h, _ := env.client.AutoscalingV2().HorizontalPodAutoscalers(ns).Get(ctx, "iris", metav1.GetOptions{})
		t.Fatalf("HPA did not scale out: desired %d; status %+v", replicas, h.Status)
	}
	waitReady(t, ctx, ns, sel, int(replicas), 2*time.Minute)
	time.Sleep(3 * time.Second)
	stopLoad()
	wg.Wait()
	t.Logf("HPA scaled to %d; %d requests, %d failed", replicas, sent.Load(), failed.Load())
	if failed.Load() != 0 {
		t.Errorf("%d of %d requests failed across the scale-out; first: %v", failed.Load(), sent.Load(), firstErr.Load())
	}
}
