package app

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/mlscale/mlscale/adapter"
	"github.com/mlscale/mlscale/collector"
	"github.com/mlscale/mlscale/collector/promql"
)

// parsed returns the command with args parsed as on the command line.
func parsed(t *testing.T, args ...string) *Adapter {
	t.Helper()
	a := New()
	if err := a.AddFlags().Parse(append([]string{"adapter"}, args...)); err != nil {
		t.Fatal(err)
	}
	return a
}

func defaultConfig(t *testing.T) *collector.Config {
	t.Helper()
	cfg, err := collector.LoadConfig("")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func readyPod(ns, name string, lbl map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbl},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "127.0.0.1",
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(time.Now().Add(-time.Minute))}}},
	}
}

// TestMakeSourceScrapes: without --prometheus-url the source is the
// scraping collector, which is also the loop the probes watch.
func TestMakeSourceScrapes(t *testing.T) {
	a := parsed(t)
	client := fake.NewClientset()
	src, loop, start, err := a.MakeSource(defaultConfig(t), client, informers.NewSharedInformerFactory(client, 0), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	col, ok := src.(*collector.Collector)
	if !ok {
		t.Fatalf("source %T, want the scraping *collector.Collector", src)
	}
	if loop != adapter.LoopState(col) || start == nil {
		t.Errorf("loop %T, start %v: want the collector's own loop and start", loop, start != nil)
	}
}

// TestMakeSourcePromQL: --prometheus-url with a bearer token file reads the
// served metrics with PromQL from that Prometheus, authenticated; without
// the token the same query fails.
func TestMakeSourcePromQL(t *testing.T) {
	var queries []string
	prom := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer t0ken" {
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"status":"error","errorType":"unauthorized","error":"no token"}`)
			return
		}
		r.ParseForm()
		queries = append(queries, r.Form.Get("query"))
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"status":"success","data":{"resultType":"vector","result":[{"metric":{"namespace":"models","pod":"iris-a"},"value":[%d,"7.5"]}]}}`, time.Now().Unix())
	}))
	defer prom.Close()
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("t0ken"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr bool
	}{
		{"with the token", []string{"--prometheus-url", prom.URL, "--prometheus-bearer-token-file", token}, false},
		{"without it", []string{"--prometheus-url", prom.URL}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := parsed(t, tc.args...)
			client := fake.NewClientset()
			inf := informers.NewSharedInformerFactory(client, 0)
			if err := inf.Core().V1().Pods().Informer().GetStore().Add(readyPod("models", "iris-a", map[string]string{"app": "iris"})); err != nil {
				t.Fatal(err)
			}
			src, loop, _, err := a.MakeSource(defaultConfig(t), client, inf, prometheus.NewRegistry())
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := src.(*promql.Source); !ok {
				t.Fatalf("source %T, want *promql.Source", src)
			}
			if loop.Ready() != nil || loop.Healthy() != nil {
				t.Error("the PromQL source's probes fail")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			vals, err := src.PodValues(ctx, "requests_per_second", "models", labels.SelectorFromSet(labels.Set{"app": "iris"}))
			if tc.wantErr {
				if err == nil {
					t.Errorf("read %v without the token", vals)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(vals) != 1 || vals[0].Pod != "iris-a" || vals[0].Value != 7.5 {
				t.Errorf("values %+v, want iris-a 7.5", vals)
			}
			if len(queries) == 0 || !strings.Contains(queries[len(queries)-1], "mlscale_requests_total") {
				t.Errorf("queries %q, want a rate of mlscale_requests_total", queries)
			}
		})
	}
	// Bad auth flags stop the adapter at start, naming the flag's subject.
	a := parsed(t, "--prometheus-url", prom.URL, "--prometheus-sigv4", "--prometheus-bearer-token-file", token)
	client := fake.NewClientset()
	if _, _, _, err := a.MakeSource(defaultConfig(t), client, informers.NewSharedInformerFactory(client, 0), prometheus.NewRegistry()); err == nil || !strings.Contains(err.Error(), "sigv4") {
		t.Errorf("sigv4 with a bearer token: got %v", err)
	}
}

// TestMakeOwnerWatch: with external metrics on, the watch reports KEDA
// owning external.metrics.k8s.io as a warning; off, there is no watch.
func TestMakeOwnerWatch(t *testing.T) {
	keda := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
		"metadata": map[string]any{"name": adapter.ExternalMetricsAPIService},
		"spec": map[string]any{"group": "external.metrics.k8s.io", "version": "v1beta1",
			"service": map[string]any{"namespace": "keda", "name": "keda-operator-metrics-apiserver", "port": int64(443)}},
	}}
	dc := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{adapter.APIServicesResource: "APIServiceList"}, keda)
	if w := parsed(t, "--enable-external-metrics=false").MakeOwnerWatch(dc, prometheus.NewRegistry()); w != nil {
		t.Error("a watch with external metrics off")
	}
	w := parsed(t, "--service-namespace", "mlscale").MakeOwnerWatch(dc, prometheus.NewRegistry())
	if w == nil {
		t.Fatal("no watch with external metrics on")
	}
	ev, changed := w.Check(context.Background())
	if !changed || !ev.Warn || !strings.Contains(ev.Msg, "keda/keda-operator-metrics-apiserver") {
		t.Errorf("event %+v (changed %v), want a warning naming KEDA's Service", ev, changed)
	}
}

// TestKEDAScaler: --keda-scaler builds the KEDA external scaler over the
// adapter's own collector; served on loopback, KEDA's generated client
// gets the metric spec and the health of the shared loop, and a Deployment
// with no pods is a known zero (inactive). Without the flag there is none.
func TestKEDAScaler(t *testing.T) {
	client := fake.NewClientset()
	inf := informers.NewSharedInformerFactory(client, 0)
	if s, err := parsed(t).MakeScaler(client, nil, nil, inf, nil, prometheus.NewRegistry(), nil); s != nil || err != nil {
		t.Fatalf("without --keda-scaler: %v, %v", s, err)
	}
	a := parsed(t, "--keda-scaler", "--scaler-address", "127.0.0.1:0")
	reg := prometheus.NewRegistry()
	src, loop, _, err := a.MakeSource(defaultConfig(t), client, inf, reg)
	if err != nil {
		t.Fatal(err)
	}
	dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "models", Name: "iris"},
		Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "iris"}}}}
	resolver := collector.NewListerResolver(inf)
	sc, err := a.MakeScaler(client, src, resolver, inf, loop, reg, nil)
	if err != nil || sc == nil {
		t.Fatalf("MakeScaler: %v, %v", sc, err)
	}
	if err := inf.Apps().V1().Deployments().Informer().GetStore().Add(dep); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- sc.Serve(ctx, ln, nil) }()
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	kedaClient := pb.NewExternalScalerClient(conn)
	cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
	defer ccancel()
	ref := &pb.ScaledObjectRef{Name: "iris", Namespace: "models", ScalerMetadata: map[string]string{
		"deploymentName": "iris", "metricName": "requests_per_second", "targetValue": "4",
	}}
	spec, err := kedaClient.GetMetricSpec(cctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if len(spec.MetricSpecs) != 1 || !strings.Contains(spec.MetricSpecs[0].MetricName, "requests_per_second") || spec.MetricSpecs[0].TargetSizeFloat != 4 {
		t.Errorf("metric spec %v, want requests_per_second with target 4", spec.MetricSpecs)
	}
	active, err := kedaClient.IsActive(cctx, ref)
	if err != nil {
		t.Fatalf("IsActive for a Deployment without pods: %v", err)
	}
	if active.Result {
		t.Error("a Deployment without pods is active")
	}
	bad := &pb.ScaledObjectRef{Name: "iris", Namespace: "models", ScalerMetadata: map[string]string{"deploymentName": "iris", "metricName": "requests_per_second"}}
	if _, err := kedaClient.GetMetricSpec(cctx, bad); err == nil || !strings.Contains(err.Error(), "targetValue") {
		t.Errorf("metadata without targetValue: %v", err)
	}
	// The health service answers for the adapter's collector loop (not yet
	// synced here, so not serving).
	h, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if h.Status == healthpb.HealthCheckResponse_SERVING {
		t.Error("the scaler reports SERVING before the collector is ready")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("the scaler did not stop with its context")
	}
}

func TestMakeDemand(t *testing.T) {
	if w, _, _, err := parsed(t).MakeDemand(); w != nil || err != nil {
		t.Errorf("without --activator-service: %v, %v", w, err)
	}
	if _, _, _, err := parsed(t, "--activator-service", "mlscale").MakeDemand(); err == nil || !strings.Contains(err.Error(), "want namespace/name") {
		t.Errorf("a bad --activator-service: %v", err)
	}
	w, ns, name, err := parsed(t, "--activator-service", "mlscale/mlscale-activator").MakeDemand()
	if err != nil || w == nil || ns != "mlscale" || name != "mlscale-activator" {
		t.Errorf("got %v %q %q %v", w, ns, name, err)
	}
}
