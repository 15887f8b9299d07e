package adapter

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apiserver/pkg/authentication/request/anonymous"
	"k8s.io/apiserver/pkg/authorization/authorizerfactory"
	genericapiserver "k8s.io/apiserver/pkg/server"
	genericoptions "k8s.io/apiserver/pkg/server/options"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	cmv1beta1 "k8s.io/metrics/pkg/apis/custom_metrics/v1beta1"
	"k8s.io/metrics/pkg/client/custom_metrics"
	"k8s.io/metrics/pkg/client/external_metrics"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/apiserver"

	"github.com/mlscale/mlscale/collector"
	"github.com/mlscale/mlscale/internal/testenv"
	"github.com/mlscale/mlscale/loadgen"
	"github.com/mlscale/mlscale/loadgen/request"
	"github.com/mlscale/mlscale/loadgen/scenario"
	"github.com/mlscale/mlscale/modelserver"
	"github.com/mlscale/mlscale/modelserver/xgboost"
)

// startAdapter serves p over TLS (a self-signed certificate) on a loopback
// port with the library's API server, as the adapter binary does, but with
// anonymous authentication and allow-all authorization: there is no
// kube-apiserver here to delegate to. It returns a client config trusting
// the certificate.
func startAdapter(t *testing.T, ctx context.Context, p *Provider, loop LoopState, external bool) *rest.Config {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opts := genericoptions.NewSecureServingOptions().WithLoopback()
	opts.Listener = ln
	opts.BindAddress = net.ParseIP("127.0.0.1")
	opts.BindPort = ln.Addr().(*net.TCPAddr).Port
	opts.ServerCert.CertDirectory = t.TempDir()
	if err := opts.MaybeDefaultWithSelfSignedCerts("localhost", nil, []net.IP{net.ParseIP("127.0.0.1")}); err != nil {
		t.Fatal(err)
	}
	sc := genericapiserver.NewRecommendedConfig(apiserver.Codecs)
	if err := opts.ApplyTo(&sc.SecureServing, &sc.LoopbackClientConfig); err != nil {
		t.Fatal(err)
	}
	sc.Authentication.Authenticator = anonymous.NewAuthenticator(nil)
	sc.Authorization.Authorizer = authorizerfactory.NewAlwaysAllowAuthorizer()
	cfg := &apiserver.Config{GenericConfig: &sc.Config}
	var em *Provider
	if external {
		em = p
	}
	var s *apiserver.CustomMetricsAdapterServer
	if em != nil {
		s, err = cfg.Complete(nil).New("mlscale-adapter-test", p, em)
	} else {
		s, err = cfg.Complete(nil).New("mlscale-adapter-test", p, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := AddChecks(s.GenericAPIServer, loop); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := s.GenericAPIServer.PrepareRun().RunWithContext(ctx); err != nil {
			t.Errorf("adapter server: %v", err)
		}
	}()
	t.Cleanup(func() { <-done })
	ca, err := os.ReadFile(opts.ServerCert.CertKey.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	return &rest.Config{
		Host:            "https://" + ln.Addr().String(),
		TLSClientConfig: rest.TLSClientConfig{CAData: ca, ServerName: "localhost"},
	}
}

func testMapper() meta.RESTMapper {
	m := meta.NewDefaultRESTMapper([]schema.GroupVersion{{Version: "v1"}, {Group: "apps", Version: "v1"}, {Group: "machinelearning.seldon.io", Version: "v1"}})
	for _, gvk := range []schema.GroupVersionKind{
		{Version: "v1", Kind: "Pod"},
		{Version: "v1", Kind: "Service"},
		{Group: "apps", Version: "v1", Kind: "Deployment"},
		{Group: "machinelearning.seldon.io", Version: "v1", Kind: "SeldonDeployment"},
	} {
		m.Add(gvk, meta.RESTScopeNamespace)
	}
	return m
}

// modelPod starts a real model server (the iris XGBoost model) on ip and
// returns the pod object that points at it.
func modelPod(t *testing.T, ctx context.Context, model modelserver.Predictor, ip, name string) (*corev1.Pod, string) {
	t.Helper()
	srv, err := modelserver.New(modelserver.Options{Predictor: model, ModelName: "iris"})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		testenv.RequireOrSkip(t, fmt.Sprintf("loopback address %s not usable: %v", ip, err))
	}
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go hs.Serve(ln) //nolint:errcheck // ends with Close
	t.Cleanup(func() { hs.Close() })
	port := ln.Addr().(*net.TCPAddr).Port
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "models", Name: name,
			Labels:      map[string]string{"app": "iris", collector.SeldonDeploymentLabel: "iris"},
			Annotations: map[string]string{collector.AnnotationPort: strconv.Itoa(port)},
		},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: ip,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(time.Now().Add(-time.Hour))}},
		},
	}, "http://" + ln.Addr().String()
}

func TestAdapterUnderLoad(t *testing.T) {
	testenv.SkipIfShort(t, "starts model servers and loads them for ~10 s")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	model, err := xgboost.Load("../modelserver/xgboost/testdata/iris.json")
	if err != nil {
		t.Fatal(err)
	}
	// Two pods on their own loopback addresses, as on a node.
	podA, urlA := modelPod(t, ctx, model, "127.0.0.2", "iris-a")
	podB, urlB := modelPod(t, ctx, model, "127.0.0.3", "iris-b")
	client := fake.NewClientset(podA, podB,
		&appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Namespace: "models", Name: "iris"},
			Spec:       appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "iris"}}},
		},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "models", Name: "iris"}, Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "iris"}}},
	)

	col, err := collector.New(collector.NewOptions(), collector.DefaultRules(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	disc, err := collector.NewDiscovery(client, collector.DiscoveryConfig{Namespaces: []string{"models"}, Selector: "app=iris"}, col)
	if err != nil {
		t.Fatal(err)
	}
	col.SetSynced(disc.HasSynced)
	factory := informers.NewSharedInformerFactory(client, 0)
	resolver := collector.NewListerResolver(factory)
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	disc.Start(ctx)
	go col.Run(ctx)

	restCfg := startAdapter(t, ctx, NewProvider(col, resolver, prometheus.NewRegistry()), col, true)
	disco, err := discovery.NewDiscoveryClientForConfig(restCfg)
	if err != nil {
		t.Fatal(err)
	}
	// custom-metrics-apiserver registers its groups with the legacy /apis
	// discovery only; in a cluster the kube-aggregator builds the
	// aggregated form from the APIService. Asked directly, use the legacy one.
	disco.UseLegacyDiscovery = true
	cm := custom_metrics.NewForConfig(restCfg, testMapper(), custom_metrics.NewAvailableAPIsGetter(disco))
	em, err := external_metrics.NewForConfig(restCfg)
	if err != nil {
		t.Fatal(err)
	}
	// Ready once discovery synced and a window of cycles ran.
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		body, err := disco.RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil && string(body) == "ok", nil
	}); err != nil {
		t.Fatalf("adapter never became ready: %v", err)
	}

	// Open-loop load from the load client: 60 requests/s to pod a and 20/s
	// to pod b, 10 rows each, for 9 s.
	rates := map[string]float64{"iris-a": 60, "iris-b": 20}
	urls := map[string]string{"iris-a": urlA, "iris-b": urlB}
	measured := map[string]float64{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for pod, r := range rates {
		sc, err := scenario.Parse([]byte(`tasks: [{name: steady, data_size: 10, rate: ` + strconv.FormatFloat(r, 'f', -1, 64) + `, duration: 9s}]`))
		if err != nil {
			t.Fatal(err)
		}
		endpoint, err := request.DirectEndpoint(urls[pod], request.Seldon, "")
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sum, err := loadgen.Run(ctx, loadgen.Config{Scenario: sc, URL: endpoint, Protocol: request.Seldon, OutDir: filepath.Join(t.TempDir(), pod), ChartWidth: -1})
			if err != nil {
				t.Errorf("load on %s: %v", pod, err)
				return
			}
			if e := sum.Tasks[0].Errors; e != 0 {
				t.Errorf("load on %s: %d errors", pod, e)
			}
			mu.Lock()
			measured[pod] = sum.Tasks[0].ReqPerSec
			mu.Unlock()
		}()
	}

	// Read while the load runs, past one window after it started.
	time.Sleep(6 * time.Second)
	ns := cm.NamespacedMetrics("models")
	sel := labels.SelectorFromSet(labels.Set{"app": "iris"})
	pods, err := ns.GetForObjects(schema.GroupKind{Kind: "Pod"}, sel, "requests_per_second", labels.Everything())
	if err != nil {
		t.Fatalf("pods by selector: %v", err)
	}
	served := map[string]float64{}
	for _, it := range pods.Items {
		served[it.DescribedObject.Name] = it.Value.AsApproximateFloat64()
	}
	one, err := ns.GetForObject(schema.GroupKind{Kind: "Pod"}, "iris-a", "requests_per_second", labels.Everything())
	if err != nil {
		t.Fatalf("pod by name: %v", err)
	}
	objects := map[string]float64{}
	for _, gk := range []schema.GroupKind{{Group: "apps", Kind: "Deployment"}, {Group: "machinelearning.seldon.io", Kind: "SeldonDeployment"}, {Kind: "Service"}} {
		v, err := ns.GetForObject(gk, "iris", "requests_per_second", labels.Everything())
		if err != nil {
			t.Fatalf("%s iris: %v", gk.Kind, err)
		}
		objects[gk.Kind] = v.Value.AsApproximateFloat64()
	}
	ext, err := em.NamespacedMetrics("models").List("requests_per_second", labels.SelectorFromSet(labels.Set{collector.SeldonDeploymentLabel: "iris"}))
	if err != nil {
		t.Fatalf("external metric: %v", err)
	}
	// v1beta1 answers too (older HPA controllers ask it).
	raw, err := disco.RESTClient().Get().AbsPath("/apis/custom.metrics.k8s.io/v1beta1/namespaces/models/pods/*/requests_per_second").
		Param("labelSelector", "app=iris").DoRaw(ctx)
	if err != nil {
		t.Fatalf("v1beta1: %v", err)
	}
	var v1 cmv1beta1.MetricValueList
	if err := json.Unmarshal(raw, &v1); err != nil || len(v1.Items) != 2 {
		t.Fatalf("v1beta1 answer %s: %v", raw, err)
	}
	wg.Wait()

	within := func(what string, got, want float64) {
		t.Helper()
		if want <= 0 || math.Abs(got-want)/want > 0.10 {
			t.Errorf("%s: served %.2f, load client measured %.2f (off by more than 10%%)", what, got, want)
		} else {
			t.Logf("%s: served %.2f, load client measured %.2f", what, got, want)
		}
	}
	total := measured["iris-a"] + measured["iris-b"]
	for pod := range rates {
		within("pod "+pod, served[pod], measured[pod])
	}
	within("pod iris-a by name", one.Value.AsApproximateFloat64(), measured["iris-a"])
	for kind, v := range objects {
		within(kind+" iris", v, total)
	}
	within("external, seldon-deployment-id=iris", ext.Items[0].Value.AsApproximateFloat64(), total)
	if got := ext.Items[0].MetricLabels[collector.SeldonDeploymentLabel]; got != "iris" {
		t.Errorf("external metric labels = %v", ext.Items[0].MetricLabels)
	}

	// Typed 404s through the real client.
	for name, err := range map[string]error{
		"unknown metric": func() error {
			_, err := ns.GetForObjects(schema.GroupKind{Kind: "Pod"}, sel, "no_such_metric", labels.Everything())
			return err
		}(),
		"no pods": func() error {
			_, err := cm.NamespacedMetrics("empty").GetForObjects(schema.GroupKind{Kind: "Pod"}, sel, "requests_per_second", labels.Everything())
			return err
		}(),
		"no such deployment": func() error {
			_, err := ns.GetForObject(schema.GroupKind{Group: "apps", Kind: "Deployment"}, "nope", "requests_per_second", labels.Everything())
			return err
		}(),
		"external unknown metric": func() error {
			_, err := em.NamespacedMetrics("models").List("no_such_metric", labels.Everything())
			return err
		}(),
	} {
		if !apierrors.IsNotFound(err) {
			t.Errorf("%s: error = %v, want a 404 NotFound status", name, err)
		}
	}
}
