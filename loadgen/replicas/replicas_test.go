package replicas

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
)

func ptr[T any](v T) *T { return &v }

func hpa(name, apiVersion, kind, target string, current, desired int32, metrics ...autoscalingv2.MetricStatus) autoscalingv2.HorizontalPodAutoscaler {
	return autoscalingv2.HorizontalPodAutoscaler{
		TypeMeta:   metav1.TypeMeta{APIVersion: "autoscaling/v2", Kind: "HorizontalPodAutoscaler"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "model"},
		Spec: autoscalingv2.HorizontalPodAutoscalerSpec{
			ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{APIVersion: apiVersion, Kind: kind, Name: target},
			MaxReplicas:    20,
		},
		Status: autoscalingv2.HorizontalPodAutoscalerStatus{CurrentReplicas: current, DesiredReplicas: desired, CurrentMetrics: metrics},
	}
}

// apiServer answers the scale subresource and HPA reads as kube-apiserver
// does, so the real client-go code paths (dynamic client, typed clientset,
// JSON decoding) run against it.
func apiServer(t *testing.T, scales map[string]int32, hpas []autoscalingv2.HorizontalPodAutoscaler) *httptest.Server {
	write := func(w http.ResponseWriter, v any) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}
	notFound := func(w http.ResponseWriter, what string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		write(w, metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: "Failure", Reason: metav1.StatusReasonNotFound, Code: 404, Message: what + " not found"})
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		switch {
		case strings.HasSuffix(p, "/scale"):
			n, ok := scales[strings.TrimSuffix(p, "/scale")]
			if !ok {
				notFound(w, p)
				return
			}
			write(w, autoscalingv1.Scale{
				TypeMeta:   metav1.TypeMeta{APIVersion: "autoscaling/v1", Kind: "Scale"},
				ObjectMeta: metav1.ObjectMeta{Name: "x", Namespace: "model"},
				Spec:       autoscalingv1.ScaleSpec{Replicas: n + 1},
				Status:     autoscalingv1.ScaleStatus{Replicas: n},
			})
		case p == "/apis/autoscaling/v2/namespaces/model/horizontalpodautoscalers":
			write(w, autoscalingv2.HorizontalPodAutoscalerList{TypeMeta: metav1.TypeMeta{APIVersion: "autoscaling/v2", Kind: "HorizontalPodAutoscalerList"}, Items: hpas})
		case strings.HasPrefix(p, "/apis/autoscaling/v2/namespaces/model/horizontalpodautoscalers/"):
			for _, h := range hpas {
				if strings.HasSuffix(p, "/"+h.Name) {
					write(w, h)
					return
				}
			}
			notFound(w, p)
		default:
			notFound(w, p)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestKubeSampler(t *testing.T) {
	cpu := autoscalingv2.MetricStatus{Type: autoscalingv2.ResourceMetricSourceType, Resource: &autoscalingv2.ResourceMetricStatus{
		Name: corev1.ResourceCPU, Current: autoscalingv2.MetricValueStatus{AverageUtilization: ptr(int32(41)), AverageValue: ptr(resource.MustParse("205m"))}}}
	rps := autoscalingv2.MetricStatus{Type: autoscalingv2.PodsMetricSourceType, Pods: &autoscalingv2.PodsMetricStatus{
		Metric: autoscalingv2.MetricIdentifier{Name: "requests_per_second"}, Current: autoscalingv2.MetricValueStatus{AverageValue: ptr(resource.MustParse("12500m"))}}}
	ext := autoscalingv2.MetricStatus{Type: autoscalingv2.ExternalMetricSourceType, External: &autoscalingv2.ExternalMetricStatus{
		Metric: autoscalingv2.MetricIdentifier{Name: "s0-mlscale"}, Current: autoscalingv2.MetricValueStatus{Value: ptr(resource.MustParse("3"))}}}
	srv := apiServer(t, map[string]int32{
		"/apis/apps/v1/namespaces/model/deployments/iris":                                            3,
		"/apis/apps/v1/namespaces/model/deployments/alone":                                           1,
		"/apis/machinelearning.seldon.io/v1/namespaces/model/seldondeployments/iris-model-autoscale": 5,
	}, []autoscalingv2.HorizontalPodAutoscaler{
		hpa("other", "apps/v1", "Deployment", "unrelated", 9, 9),
		hpa("iris", "apps/v1", "Deployment", "iris", 3, 4, cpu, rps),
		hpa("iris-model-autoscale-autoscale-classifier", "apps/v1", "Deployment", "iris-model-autoscale-autoscale-classifier", 5, 6, ext),
	})
	tests := []struct {
		name    string
		target  Target
		want    Sample
		wantErr string
	}{
		{"deployment, HPA found by its target", Target{Resource: "deployments.v1.apps", Namespace: "model", Name: "iris"},
			Sample{Spec: 4, Status: 3, HPA: "iris", Current: 3, Desire: 4, Metrics: []string{"cpu=41%", "pods/requests_per_second=12.5"}}, ""},
		{"seldon deployment, Seldon's generated HPA found", Target{Resource: "seldondeployments.v1.machinelearning.seldon.io", Namespace: "model", Name: "iris-model-autoscale"},
			Sample{Spec: 6, Status: 5, HPA: "iris-model-autoscale-autoscale-classifier", Current: 5, Desire: 6, Metrics: []string{"external/s0-mlscale=3"}}, ""},
		{"seldon deployment, HPA named", Target{Resource: "seldondeployments.v1.machinelearning.seldon.io", Namespace: "model", Name: "iris-model-autoscale", HPA: "iris-model-autoscale-autoscale-classifier"},
			Sample{Spec: 6, Status: 5, HPA: "iris-model-autoscale-autoscale-classifier", Current: 5, Desire: 6, Metrics: []string{"external/s0-mlscale=3"}}, ""},
		{"no HPA", Target{Resource: "deployments.v1.apps", Namespace: "model", Name: "alone"}, Sample{Spec: 2, Status: 1}, ""},
		{"missing target", Target{Resource: "deployments.v1.apps", Namespace: "model", Name: "gone"}, Sample{}, "reading scale of deployments model/gone"},
		{"missing named HPA", Target{Resource: "deployments.v1.apps", Namespace: "model", Name: "iris", HPA: "nope"}, Sample{Spec: 4, Status: 3}, "reading HPA model/nope"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := NewKube(&rest.Config{Host: srv.URL}, tc.target)
			if err != nil {
				t.Fatal(err)
			}
			got, err := s.Sample(context.Background())
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if time.Since(got.Time) > time.Minute {
				t.Errorf("sample time %v", got.Time)
			}
			if diff := cmp.Diff(tc.want, got, cmpopts.IgnoreFields(Sample{}, "Time")); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestNewKubeValidates(t *testing.T) {
	for _, tc := range []Target{
		{Resource: "deployments", Namespace: "a", Name: "b"},
		{Resource: "deployments.v1.apps", Name: "b"},
	} {
		if _, err := NewKube(&rest.Config{Host: "http://127.0.0.1:1"}, tc); err == nil {
			t.Errorf("%+v: no error", tc)
		}
	}
}

type countingSampler struct {
	n    atomic.Int32
	fail int32
}

func (c *countingSampler) Sample(ctx context.Context) (Sample, error) {
	n := c.n.Add(1)
	if n == c.fail {
		return Sample{}, errors.New("apiserver hiccup")
	}
	return Sample{Time: time.Now(), Status: n}, nil
}

func TestLoop(t *testing.T) {
	s := &countingSampler{fail: 2}
	ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
	defer cancel()
	var got []int32
	var errs int
	Loop(ctx, s, 50*time.Millisecond, func(s Sample) { got = append(got, s.Status) }, func(error) { errs++ })
	if errs != 1 || len(got) < 3 || got[0] != 1 || got[1] != 3 {
		t.Errorf("samples %v and %d errors, want the first immediately, the failed second reported, then more", got, errs)
	}
}

func TestDesireKnown(t *testing.T) {
	cond := func(status corev1.ConditionStatus, reason string) autoscalingv2.HorizontalPodAutoscalerStatus {
		return autoscalingv2.HorizontalPodAutoscalerStatus{Conditions: []autoscalingv2.HorizontalPodAutoscalerCondition{
			{Type: autoscalingv2.AbleToScale, Status: corev1.ConditionTrue},
			{Type: autoscalingv2.ScalingActive, Status: status, Reason: reason},
		}}
	}
	for _, tc := range []struct {
		name string
		st   autoscalingv2.HorizontalPodAutoscalerStatus
		want bool
	}{
		{"before the first sync", autoscalingv2.HorizontalPodAutoscalerStatus{}, false},
		{"metrics read", cond(corev1.ConditionTrue, "ValidMetricFound"), true},
		{"metrics missing", cond(corev1.ConditionFalse, "FailedGetPodsMetric"), false},
		{"scaled to zero", cond(corev1.ConditionFalse, "ScalingDisabled"), true},
	} {
		if got := DesireKnown(tc.st); got != tc.want {
			t.Errorf("%s: DesireKnown = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestCSV(t *testing.T) {
	var buf bytes.Buffer
	begin := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	w, err := NewCSVWriter(&buf, begin)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(Sample{Time: begin.Add(1500 * time.Millisecond), Spec: 2, Status: 1, HPA: "h", Current: 1, Desire: 2, DesireKnown: true, Metrics: []string{"cpu=41%", "pods/x=1"}}); err != nil {
		t.Fatal(err)
	}
	// Before its first sync an HPA's desired 0 is no decision: left empty.
	if err := w.Write(Sample{Time: begin.Add(2500 * time.Millisecond), Spec: 1, Status: 1, HPA: "h", Current: 0, Desire: 0}); err != nil {
		t.Fatal(err)
	}
	want := "timestamp,elapsed_s,spec_replicas,status_replicas,hpa,hpa_current_replicas,hpa_desired_replicas,hpa_metrics\n" +
		"2026-01-01T00:00:01.5Z,1.500,2,1,h,1,2,cpu=41%;pods/x=1\n" +
		"2026-01-01T00:00:02.5Z,2.500,1,1,h,0,,\n"
	if diff := cmp.Diff(want, buf.String()); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
