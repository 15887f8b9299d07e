//go:build e2e

package e2e

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestKEDACombined is the keda-combined overlay on the local cluster
// (overlays/local-keda-combined): no scaler Deployment, the adapter serves
// KEDA's external scaler from its own collector (--keda-scaler) behind the
// mlscale-scaler Service, with the same mutual TLS. KEDA must find it Ready,
// wake the model from zero on the activator's demand (the one watcher both
// front doors share) and scale it out on the adapter's numbers; no request
// fails.
func TestKEDACombined(t *testing.T) {
	needKEDA(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dyn := kedaReady(t, ctx)

	deployOverlay(t, ctx, "local-keda-combined")
	if d, err := env.client.AppsV1().Deployments("mlscale").Get(ctx, "mlscale-scaler", metav1.GetOptions{}); err == nil {
		t.Fatalf("the combined overlay still runs a scaler Deployment (%s)", d.Name)
	}
	waitReady(t, ctx, "mlscale", "app.kubernetes.io/name=adapter", 1, 2*time.Minute)
	waitEndpoints(t, ctx, "mlscale", "mlscale-scaler", 1)
	waitScaledObjectTrue(t, ctx, dyn, "Ready", 2*time.Minute)

	// Idle: to zero after the cooldown, then the first request wakes it.
	waitReplicas(t, ctx, func(r int32) bool { return r == 0 }, 3*time.Minute)
	const path = "/seldon/model/iris-model-autoscale/api/v1.0/predictions"
	first := time.Now()
	if _, err := predict(ctx, path, []float64{5.1, 3.5, 1.4, 0.2}); err != nil {
		t.Fatalf("the first request at zero replicas: %v", err)
	}
	t.Logf("first request from zero answered in %s (scaler inside the adapter)", time.Since(first).Round(time.Millisecond))

	// 20/s at a target of 4 per pod is 5 replicas, read by KEDA from the
	// adapter's embedded scaler.
	load := &openLoop{}
	load.rate.Store(20)
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	load.run(loadCtx, onePrediction(path))
	got := waitReplicas(t, ctx, func(r int32) bool { return r >= 4 && r <= 6 }, 3*time.Minute)
	waitReady(t, ctx, "model", modelSelector, int(got), 2*time.Minute)
	stopLoad()
	load.wg.Wait()
	t.Logf("20/s: KEDA scaled out to %d replicas (formula: 5); %d requests, %d failed", got, load.sent.Load(), load.failed.Load())
	if load.failed.Load() != 0 {
		t.Errorf("%d of %d requests failed; first: %v", load.failed.Load(), load.sent.Load(), load.firstErr.Load())
	}
}
