//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/mlscale/mlscale/internal/testenv"
)

var (
	scaledObjects = schema.GroupVersionResource{Group: "keda.sh", Version: "v1alpha1", Resource: "scaledobjects"}
	apiServices   = schema.GroupVersionResource{Group: "apiregistration.k8s.io", Version: "v1", Resource: "apiservices"}
)

// needKEDA fails the test under CI=true (skips elsewhere) when the cluster
// was started without KEDA.
func needKEDA(t *testing.T) {
	t.Helper()
	if os.Getenv("MLSCALE_E2E_NO_KEDA") == "1" {
		testenv.RequireOrSkip(t, "MLSCALE_E2E_NO_KEDA=1: the cluster runs without KEDA")
	}
}

// kedaReady waits for KEDA's operator and metrics server, makes sure KEDA
// owns external.metrics.k8s.io, and returns the dynamic client.
func kedaReady(t *testing.T, ctx context.Context) dynamic.Interface {
	t.Helper()
	dyn := dynamicClient(t)
	waitReady(t, ctx, "keda", "app=keda-operator", 1, 3*time.Minute)
	waitReady(t, ctx, "keda", "app=keda-metrics-apiserver", 1, 3*time.Minute)
	ensureKEDAMetricsAPI(t, ctx, dyn)
	return dyn
}

func dynamicClient(t *testing.T) dynamic.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", env.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	return dynamic.NewForConfigOrDie(cfg)
}

// TestKEDAThroughActivator is issue 8 on the real KEDA v2.21.0 operator and
// metrics API server, with requests through the activator (issue 12): the
// model server scaled by a ScaledObject with mlscale's scaler as `external`
// and `external-push` triggers, minimum zero. Idle goes to zero; the first
// request, held by the activator (whose demand stream the scaler watches,
// pushing "active" to KEDA at once), wakes it and is
// answered; load scales it out; quiet brings it back to zero; no request
// fails. Then the faults: the scaler killed (the replicas hold, nothing goes
// to zero or to a made-up count) and the scaler's TLS misconfigured (KEDA
// says so in the ScaledObject's status and events; no silent zero).
func TestKEDAThroughActivator(t *testing.T) {
	needKEDA(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	dyn := kedaReady(t, ctx)

	deployOverlay(t, ctx, "local-keda")
	waitReady(t, ctx, "mlscale", "app.kubernetes.io/name=scaler", 1, 2*time.Minute)
	waitScaledObjectTrue(t, ctx, dyn, "Ready", 2*time.Minute)

	// Idle: KEDA takes it to zero after the cooldown.
	start := time.Now()
	waitReplicas(t, ctx, func(r int32) bool { return r == 0 }, 3*time.Minute)
	waitReady(t, ctx, "model", modelSelector, 0, time.Minute)
	t.Logf("idle: scaled to zero %s after the ScaledObject was ready", time.Since(start).Round(time.Second))

	// The first request at zero is held by the activator, wakes the model
	// and is answered.
	const path = "/seldon/model/iris-model-autoscale/api/v1.0/predictions"
	first := time.Now()
	if _, err := predict(ctx, path, []float64{5.1, 3.5, 1.4, 0.2}); err != nil {
		t.Fatalf("the first request at zero replicas: %v", err)
	}
	t.Logf("first request from zero answered in %s", time.Since(first).Round(time.Millisecond))
	if held := activatorMetric(t, ctx, `mlscale_activator_hold_outcomes_total{namespace="model",outcome="released",service="iris-model-autoscale"}`); held < 1 {
		t.Errorf("the activator's metrics show %v requests released from the hold, want >= 1", held)
	}

	// Load scales it out: 20/s at a target of 4 per pod is 5 replicas.
	load := &openLoop{}
	load.rate.Store(20)
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	load.run(loadCtx, onePrediction(path))
	got := waitReplicas(t, ctx, func(r int32) bool { return r >= 4 && r <= 6 }, 3*time.Minute)
	waitReady(t, ctx, "model", modelSelector, int(got), 2*time.Minute)
	t.Logf("20/s: KEDA's HPA scaled out to %d replicas (formula: 5)", got)

	// The faults, under that load. TLS first: KEDA's event recorder drops
	// a busy object's events after a burst (client-go's spam filter), and
	// the scaler outage below makes many.
	kedaBadTLS(t, ctx, dyn, load)
	kedaScalerKilled(t, ctx, dyn, load)

	// Quiet: back to zero, and nothing failed on the way.
	stopLoad()
	load.wg.Wait()
	quiet := time.Now()
	waitReplicas(t, ctx, func(r int32) bool { return r == 0 }, 4*time.Minute)
	t.Logf("quiet: back to zero in %s; %d requests, %d failed", time.Since(quiet).Round(time.Second), load.sent.Load(), load.failed.Load())
	if load.failed.Load() != 0 {
		t.Errorf("%d of %d requests failed; first: %v", load.failed.Load(), load.sent.Load(), load.firstErr.Load())
	}
}

// kedaScalerKilled: at 20/s the scaler goes away. Nothing may scale to a
// wrong number: KEDA's HPA cannot read the metric and must hold the replicas
// it has (HPAActive=False, FailedGetExternalMetric), and KEDA must not take
// the model to zero for triggers it cannot ask. KEDA's fallback does not
// fire here: in v2.21.0 an unreachable external scaler fails GetMetricSpec
// first and the fallback counter is only kept on the metrics path
// (kedacore/keda#8056), so the test accepts the fallback's 2 replicas only
// if a fixed KEDA ever applies it. The scaler comes back and KEDA follows
// the load again.
func kedaScalerKilled(t *testing.T, ctx context.Context, dyn dynamic.Interface, load *openLoop) {
	failed0 := load.failed.Load()
	before := waitReplicas(t, ctx, func(int32) bool { return true }, time.Second)
	setReplicas(t, ctx, "mlscale", "mlscale-scaler", 0)
	waitReady(t, ctx, "mlscale", "app.kubernetes.io/name=scaler", 0, time.Minute)
	down := time.Now()
	hpaMsg, fallback := "", false
	for time.Since(down) < 75*time.Second {
		so, err := dyn.Resource(scaledObjects).Namespace("model").Get(ctx, "iris-model-autoscale", metav1.GetOptions{})
		if err == nil {
			if c := condition(so, "Fallback"); c != nil && c["status"] == "True" {
				fallback = true
			}
			if c := condition(so, "HPAActive"); c != nil && c["status"] == "False" {
				hpaMsg = fmt.Sprint(c["reason"], ": ", c["message"])
			}
		}
		d, err := env.client.AppsV1().Deployments("model").Get(ctx, "iris-model-autoscale", metav1.GetOptions{})
		if err == nil && d.Spec.Replicas != nil && *d.Spec.Replicas != before && !(fallback && *d.Spec.Replicas == 2) {
			t.Fatalf("with the scaler down the model went from %d to %d replicas (fallback active: %v)", before, *d.Spec.Replicas, fallback)
		}
		time.Sleep(time.Second)
	}
	if hpaMsg == "" {
		t.Fatalf("75 s with the scaler down and the ScaledObject never reported HPAActive=False")
	}
	t.Logf("scaler down for 75 s: replicas held at %d (KEDA fallback active: %v); ScaledObject says %.250s", before, fallback, hpaMsg)
	setReplicas(t, ctx, "mlscale", "mlscale-scaler", 1)
	waitReady(t, ctx, "mlscale", "app.kubernetes.io/name=scaler", 1, 2*time.Minute)
	back := time.Now()
	waitScaledObjectTrue(t, ctx, dyn, "HPAActive", 3*time.Minute)
	t.Logf("scaler back: KEDA reads the metric again after %s", time.Since(back).Round(time.Second))
	if n := load.failed.Load() - failed0; n != 0 {
		t.Errorf("%d requests failed while the scaler was down", n)
	}
}

// kedaBadTLS: the TriggerAuthentication names a CA that did not sign the
// scaler's certificate. KEDA must report the TLS failure in the
// ScaledObject's status and must not scale the model to zero for it.
func kedaBadTLS(t *testing.T, ctx context.Context, dyn dynamic.Interface, load *openLoop) {
	failed0 := load.failed.Load()
	before := waitReplicas(t, ctx, func(int32) bool { return true }, time.Second)

	// The cluster's CA, which signed nothing of the scaler's.
	kubectl(t, ctx, nil, "-n", "model", "create", "secret", "generic", "wrong-ca", "--from-file=ca.crt="+env.state+"/pki/ca.crt")
	setTriggerCA(t, ctx, dyn, "wrong-ca", 6)
	deadline := time.Now().Add(3 * time.Minute)
	msg := ""
	for time.Now().Before(deadline) && msg == "" {
		so, err := dyn.Resource(scaledObjects).Namespace("model").Get(ctx, "iris-model-autoscale", metav1.GetOptions{})
		if err == nil {
			for _, typ := range []string{"Ready", "Fallback", "HPAActive"} {
				c := condition(so, typ)
				if c == nil {
					continue
				}
				m := fmt.Sprint(c["message"])
				if (typ != "Fallback" && c["status"] == "False") || (typ == "Fallback" && c["status"] == "True") {
					msg = typ + "=" + fmt.Sprint(c["status"]) + ": " + m
				}
			}
		}
		d, err := env.client.AppsV1().Deployments("model").Get(ctx, "iris-model-autoscale", metav1.GetOptions{})
		if err == nil && d.Spec.Replicas != nil && *d.Spec.Replicas == 0 {
			t.Fatalf("with the scaler's TLS misconfigured KEDA scaled the model to zero")
		}
		time.Sleep(time.Second)
	}
	if msg == "" {
		t.Fatalf("KEDA's ScaledObject status never showed the TLS failure")
	}
	t.Logf("TLS misconfigured: ScaledObject %s", msg)
	// The cause is in KEDA's operator log. Its events do not carry it
	// reliably: the events API folds KEDAScalerFailed events of one
	// ScaledObject into a series that keeps the first message (here the
	// scaler outage's "handshake failed: EOF" or "got empty metric spec").
	var cause string
	for end := time.Now().Add(90 * time.Second); time.Now().Before(end) && cause == ""; time.Sleep(2 * time.Second) {
		logs := kubectl(t, ctx, nil, "-n", "keda", "logs", "deployment/keda-operator", "--since=3m")
		for _, line := range strings.Split(logs, "\n") {
			if strings.Contains(line, "x509") && strings.Contains(line, "iris-model-autoscale") {
				cause = line
			}
		}
	}
	if cause == "" {
		t.Errorf("KEDA's operator log does not name the certificate failure within 90 s")
	} else {
		t.Logf("KEDA's operator log: %.400s", cause)
	}
	// Nothing went to zero while the load ran on a broken trigger.
	d, err := env.client.AppsV1().Deployments("model").Get(ctx, "iris-model-autoscale", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("replicas with the broken trigger: %d (before: %d)", *d.Spec.Replicas, before)
	if *d.Spec.Replicas < before {
		t.Errorf("with the scaler's TLS misconfigured the model went from %d down to %d replicas under the same load", before, *d.Spec.Replicas)
	}
	// Put the right CA back; KEDA reads the metric again.
	setTriggerCA(t, ctx, dyn, "mlscale-keda-client", 5)
	waitScaledObjectTrue(t, ctx, dyn, "HPAActive", 3*time.Minute)
	if n := load.failed.Load() - failed0; n != 0 {
		t.Errorf("%d requests failed while the trigger's TLS was broken", n)
	}
}

// setTriggerCA points the TriggerAuthentication's caCert at secret and
// changes the ScaledObject's spec (pollingInterval), because KEDA rebuilds a
// ScaledObject's scalers, and dials anew (its gRPC connection pool is keyed
// by address and TLS material), only when the ScaledObject's generation
// changes.
func setTriggerCA(t *testing.T, ctx context.Context, dyn dynamic.Interface, secret string, pollingInterval int) {
	t.Helper()
	auth := []byte(`{"spec":{"secretTargetRef":[{"parameter":"caCert","name":"` + secret + `","key":"ca.crt"},{"parameter":"tlsClientCert","name":"mlscale-keda-client","key":"tls.crt"},{"parameter":"tlsClientKey","name":"mlscale-keda-client","key":"tls.key"}]}}`)
	if _, err := dyn.Resource(schema.GroupVersionResource{Group: "keda.sh", Version: "v1alpha1", Resource: "triggerauthentications"}).
		Namespace("model").Patch(ctx, "mlscale-scaler-tls", types.MergePatchType, auth, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	touch := []byte(fmt.Sprintf(`{"spec":{"pollingInterval":%d}}`, pollingInterval))
	if _, err := dyn.Resource(scaledObjects).Namespace("model").Patch(ctx, "iris-model-autoscale", types.MergePatchType, touch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// ensureKEDAMetricsAPI gives external.metrics.k8s.io back to KEDA. Only one
// server can own an API group, and the `local` overlay (other tests, other
// benchmark configurations) registers mlscale's adapter for it and deletes
// the APIService on cleanup: the clash the `keda` component avoids. So
// KEDA's install is re-applied first, as a user would after that mistake.
func ensureKEDAMetricsAPI(t *testing.T, ctx context.Context, dyn dynamic.Interface) {
	t.Helper()
	kubectl(t, ctx, nil, "apply", "--server-side", "--force-conflicts", "--field-manager=mlscale-localcluster", "-k", env.state+"/keda")
	waitAPIService(t, ctx, dyn, "v1beta1.external.metrics.k8s.io", "keda", "keda-metrics-apiserver")
}

func condition(so *unstructured.Unstructured, typ string) map[string]any {
	conds, _, _ := unstructured.NestedSlice(so.Object, "status", "conditions")
	for _, c := range conds {
		m, ok := c.(map[string]any)
		if ok && m["type"] == typ {
			return m
		}
	}
	return nil
}

// waitScaledObjectTrue waits for the ScaledObject's condition typ (Ready,
// HPAActive, ...) to be True.
func waitScaledObjectTrue(t *testing.T, ctx context.Context, dyn dynamic.Interface, typ string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last map[string]any
	for time.Now().Before(deadline) {
		so, err := dyn.Resource(scaledObjects).Namespace("model").Get(ctx, "iris-model-autoscale", metav1.GetOptions{})
		if err == nil {
			last = condition(so, typ)
			if last != nil && last["status"] == "True" {
				return
			}
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("ScaledObject model/iris-model-autoscale not %s within %s: %v", typ, timeout, last)
}

func waitAPIService(t *testing.T, ctx context.Context, dyn dynamic.Interface, name, ns, svc string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	var last string
	for time.Now().Before(deadline) {
		a, err := dyn.Resource(apiServices).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			gotNS, _, _ := unstructured.NestedString(a.Object, "spec", "service", "namespace")
			gotName, _, _ := unstructured.NestedString(a.Object, "spec", "service", "name")
			if gotNS != ns || gotName != svc {
				t.Fatalf("APIService %s is served by %s/%s, want %s/%s: another server took the group", name, gotNS, gotName, ns, svc)
			}
			c := condition(a, "Available")
			if c != nil && c["status"] == "True" {
				return
			}
			last = fmt.Sprint(c)
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("APIService %s not Available in 2 minutes: %s", name, last)
}

// waitReplicas waits for the Deployment's spec.replicas (what KEDA and its
// HPA set) to satisfy ok.
func waitReplicas(t *testing.T, ctx context.Context, ok func(int32) bool, timeout time.Duration) int32 {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last int32 = -1
	for time.Now().Before(deadline) {
		d, err := env.client.AppsV1().Deployments("model").Get(ctx, "iris-model-autoscale", metav1.GetOptions{})
		if err == nil && d.Spec.Replicas != nil {
			last = *d.Spec.Replicas
			if ok(last) {
				return last
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("Deployment model/iris-model-autoscale at %d replicas after %s, not the expected count", last, timeout)
	return 0
}
