package burst

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	scalefake "k8s.io/client-go/scale/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"

	"github.com/mlscale/mlscale/collector"
)

// scales is a data-driven /scale store behind the fake scale client: Get
// returns the stored object, Update checks the resourceVersion as the API
// server does and bumps it.
type scales struct {
	mu      sync.Mutex
	m       map[string]*autoscalingv1.Scale // "resource/name"
	updates []string
}

func (s *scales) client() *scalefake.FakeScaleClient {
	c := &scalefake.FakeScaleClient{}
	c.AddReactor("get", "*", func(a clienttesting.Action) (bool, runtime.Object, error) {
		g := a.(clienttesting.GetAction)
		s.mu.Lock()
		defer s.mu.Unlock()
		sc, ok := s.m[g.GetResource().Resource+"/"+g.GetName()]
		if !ok {
			return true, nil, apierrors.NewNotFound(g.GetResource().GroupResource(), g.GetName())
		}
		return true, sc.DeepCopy(), nil
	})
	c.AddReactor("update", "*", func(a clienttesting.Action) (bool, runtime.Object, error) {
		u := a.(clienttesting.UpdateAction)
		in := u.GetObject().(*autoscalingv1.Scale)
		key := u.GetResource().Resource + "/" + in.Name
		s.mu.Lock()
		defer s.mu.Unlock()
		cur, ok := s.m[key]
		if !ok {
			return true, nil, apierrors.NewNotFound(u.GetResource().GroupResource(), in.Name)
		}
		if in.ResourceVersion != cur.ResourceVersion {
			return true, nil, apierrors.NewConflict(u.GetResource().GroupResource(), in.Name, errors.New("the object has been modified"))
		}
		rv, _ := strconv.Atoi(cur.ResourceVersion)
		cur.Spec.Replicas = in.Spec.Replicas
		cur.ResourceVersion = strconv.Itoa(rv + 1)
		s.updates = append(s.updates, fmt.Sprintf("%s %d", key, in.Spec.Replicas))
		return true, cur.DeepCopy(), nil
	})
	return c
}

func (s *scales) replicas(key string) int32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[key].Spec.Replicas
}

// demands is a data-driven Demand: a reading or an error per metric.
type demands struct {
	mu   sync.Mutex
	m    map[string]Reading
	errs map[string]error
	seen []Query
}

func (d *demands) Demand(_ context.Context, q Query) (Reading, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.seen = append(d.seen, q)
	if err := d.errs[q.Metric]; err != nil {
		return Reading{}, err
	}
	r, ok := d.m[q.Metric]
	if !ok {
		return Reading{}, fmt.Errorf("%w: %s", collector.ErrNoData, q.Metric)
	}
	return r, nil
}

func (d *demands) set(metric string, r Reading) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.m[metric] = r
}

func testMapper() meta.RESTMapper {
	apps := schema.GroupVersion{Group: "apps", Version: "v1"}
	sdep := schema.GroupVersion{Group: "machinelearning.seldon.io", Version: "v1"}
	m := meta.NewDefaultRESTMapper([]schema.GroupVersion{apps, sdep})
	m.Add(apps.WithKind("Deployment"), meta.RESTScopeNamespace)
	m.Add(sdep.WithKind("SeldonDeployment"), meta.RESTScopeNamespace)
	return m
}

func readyPod(name string, lbls map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "model", Name: name, Labels: lbls},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
}

func burstHPA(name, apiVersion, kind, ann string) *autoscalingv2.HorizontalPodAutoscaler {
	q := resource.MustParse("4")
	one := int32(1)
	h := &autoscalingv2.HorizontalPodAutoscaler{
		ObjectMeta: metav1.ObjectMeta{Namespace: "model", Name: name, Annotations: map[string]string{Annotation: ann}},
		Spec: autoscalingv2.HorizontalPodAutoscalerSpec{
			ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{APIVersion: apiVersion, Kind: kind, Name: name},
			MinReplicas:    &one, MaxReplicas: 20,
			Metrics: []autoscalingv2.MetricSpec{
				{Type: autoscalingv2.PodsMetricSourceType, Pods: &autoscalingv2.PodsMetricSource{
					Metric: autoscalingv2.MetricIdentifier{Name: "requests_per_second"},
					Target: autoscalingv2.MetricTarget{Type: autoscalingv2.AverageValueMetricType, AverageValue: &q}}},
				// CPU is metrics-server's: left to the HPA.
				{Type: autoscalingv2.ResourceMetricSourceType, Resource: &autoscalingv2.ResourceMetricSource{Name: corev1.ResourceCPU}},
			},
			Behavior: podsBehavior(10, 15),
		},
	}
	if ann == "-" {
		h.Annotations = nil
	}
	return h
}

type fixture struct {
	c        *Controller
	scales   *scales
	demand   *demands
	floors   *Floors
	recorder *record.FakeRecorder
	reg      *prometheus.Registry
	now      time.Time
}

func newFixture(t *testing.T, hpas ...*autoscalingv2.HorizontalPodAutoscaler) *fixture {
	t.Helper()
	objs := []runtime.Object{
		readyPod("iris-0", map[string]string{"app": "iris"}),
		readyPod("sdep-0", map[string]string{"seldon-deployment-id": "sdep"}),
	}
	for _, h := range hpas {
		objs = append(objs, h)
	}
	client := fake.NewClientset(objs...)
	factory := informers.NewSharedInformerFactory(client, 0)
	hpaLister := factory.Autoscaling().V2().HorizontalPodAutoscalers().Lister()
	podLister := factory.Core().V1().Pods().Lister()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	f := &fixture{
		scales: &scales{m: map[string]*autoscalingv1.Scale{
			"deployments/iris":       {ObjectMeta: metav1.ObjectMeta{Namespace: "model", Name: "iris", ResourceVersion: "1"}, Spec: autoscalingv1.ScaleSpec{Replicas: 1}, Status: autoscalingv1.ScaleStatus{Replicas: 1, Selector: "app=iris"}},
			"seldondeployments/sdep": {ObjectMeta: metav1.ObjectMeta{Namespace: "model", Name: "sdep", ResourceVersion: "1"}, Spec: autoscalingv1.ScaleSpec{Replicas: 1}, Status: autoscalingv1.ScaleStatus{Replicas: 1, Selector: "seldon-deployment-id=sdep"}},
		}},
		demand:   &demands{m: map[string]Reading{}, errs: map[string]error{}},
		floors:   NewFloors(),
		recorder: record.NewFakeRecorder(100),
		reg:      prometheus.NewRegistry(),
		now:      base,
	}
	c, err := New(NewConfig(), Deps{
		HPAs: hpaLister, Pods: podLister, Scales: f.scales.client(), Mapper: testMapper(),
		Resolver: nil, Demand: f.demand, Floors: f.floors, Recorder: f.recorder, Registerer: f.reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	c.now = func() time.Time { return f.now }
	f.floors.now = c.now
	f.c = c
	return f
}

// tick advances the clock by d and evaluates every opted-in HPA.
func (f *fixture) tick(d time.Duration) {
	f.now = f.now.Add(d)
	f.c.EvaluateAll(context.Background())
}

func (f *fixture) events() []string {
	var out []string
	for {
		select {
		case e := <-f.recorder.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

func TestControllerBursts(t *testing.T) {
	for _, tc := range []struct{ name, apiVersion, kind, key, selector string }{
		{"Deployment", "apps/v1", "Deployment", "deployments/iris", "app=iris"},
		{"SeldonDeployment", "machinelearning.seldon.io/v1", "SeldonDeployment", "seldondeployments/sdep", "seldon-deployment-id=sdep"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := strings.Split(tc.key, "/")[1]
			f := newFixture(t, burstHPA(name, tc.apiVersion, tc.kind, "threshold=200%,hold=1s"))
			// Quiet: 1/s on one pod sized for 4/s.
			f.demand.set("requests_per_second", Reading{Value: 1, At: f.now})
			f.tick(500 * time.Millisecond)
			// The step: 24/s, read fresh each time.
			for i := 0; i < 3; i++ {
				f.now = f.now.Add(500 * time.Millisecond)
				f.demand.set("requests_per_second", Reading{Value: 24, At: f.now.Add(-200 * time.Millisecond)})
				f.c.EvaluateAll(context.Background())
			}
			if got := f.scales.replicas(tc.key); got != 6 {
				t.Fatalf("%s at %d replicas after 1.5 s at 600%%, want 6; updates %v; events %v", tc.key, got, f.scales.updates, f.events())
			}
			// The Pods metric was read over the pods the /scale selector picks.
			if q := f.demand.seen[len(f.demand.seen)-1]; q.Selector.String() != tc.selector || q.Namespace != "model" {
				t.Fatalf("demand read for %+v, want namespace model, selector %s", q, tc.selector)
			}
			ev := f.events()
			if len(ev) != 1 || !strings.HasPrefix(ev[0], "Normal Burst requests_per_second 24 against ready capacity 4 (1 ready x 4): 600%") || !strings.HasSuffix(ev[0], ": 1 -> 6") {
				t.Fatalf("events %q, want one Burst event with the numbers", ev)
			}
			if v := testutil.ToFloat64(f.c.scaleUps.WithLabelValues("model", name)); v != 1 {
				t.Fatalf("mlscale_burst_scale_ups_total = %v, want 1", v)
			}
			// The adapter serves the burst's demand to the HPA for one sync
			// period plus the margin.
			sel := labels.SelectorFromSet(labels.Set(parseSet(t, tc.selector)))
			if v, ok := f.floors.Get("model", "requests_per_second", sel); !ok || v != 24 {
				t.Fatalf("floor %v %v, want 24", v, ok)
			}
			// More of the same: nothing to do.
			f.tick(time.Second)
			if len(f.scales.updates) != 1 {
				t.Fatalf("updates %v, want exactly one", f.scales.updates)
			}
			f.now = f.now.Add(20 * time.Second)
			if _, ok := f.floors.Get("model", "requests_per_second", sel); ok {
				t.Fatal("floor still in force 21 s after the burst")
			}
		})
	}
}

func parseSet(t *testing.T, s string) map[string]string {
	t.Helper()
	set, err := labels.ConvertSelectorToLabelsMap(s)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// TestControllerNoAction: without fresh demand, opt-in or a valid
// annotation nothing scales.
func TestControllerNoAction(t *testing.T) {
	tests := []struct {
		name       string
		ann        string
		setup      func(f *fixture)
		wantEvents []string
		skipped    map[string]float64
	}{
		{name: "not opted in", ann: "-", setup: func(f *fixture) {
			f.demand.set("requests_per_second", Reading{Value: 100, At: f.now})
		}},
		{name: "stale demand (collector stopped scraping)", ann: "", setup: func(f *fixture) {
			f.demand.set("requests_per_second", Reading{Value: 100, At: f.now.Add(-10 * time.Second)})
		}, skipped: map[string]float64{"stale": 4}},
		{name: "no demand (collector down, no data)", ann: "", setup: func(f *fixture) {
			f.demand.errs["requests_per_second"] = fmt.Errorf("%w: nothing scraped", collector.ErrNoData)
		}, skipped: map[string]float64{"stale": 4}},
		{name: "bad annotation: one warning", ann: "threshold=50%", setup: func(f *fixture) {
			f.demand.set("requests_per_second", Reading{Value: 100, At: f.now})
		}, wantEvents: []string{"Warning InvalidBurstAnnotation mlscale.io/burst: threshold \"50%\" is below 100%: a burst needs demand above capacity"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, burstHPA("iris", "apps/v1", "Deployment", tc.ann))
			tc.setup(f)
			for range 4 {
				f.tick(500 * time.Millisecond)
				if r, ok := f.demand.m["requests_per_second"]; ok && tc.name == "not opted in" {
					r.At = f.now
					f.demand.set("requests_per_second", r)
				}
			}
			if len(f.scales.updates) != 0 {
				t.Fatalf("scaled: %v", f.scales.updates)
			}
			if diff := fmt.Sprint(f.events()); diff != fmt.Sprint(tc.wantEvents) && !(len(tc.wantEvents) == 0 && diff == "[]") {
				t.Fatalf("events %s, want %q", diff, tc.wantEvents)
			}
			for reason, want := range tc.skipped {
				if v := testutil.ToFloat64(f.c.skipped.WithLabelValues(reason)); v != want {
					t.Fatalf("mlscale_burst_skipped_total{reason=%q} = %v, want %v", reason, v, want)
				}
			}
		})
	}
}

// TestControllerConflict: the HPA scaled the workload between the burst's
// read and its write; the burst fails that round instead of overwriting, and
// the next round starts from the HPA's count.
func TestControllerConflict(t *testing.T) {
	f := newFixture(t, burstHPA("iris", "apps/v1", "Deployment", "hold=0s"))
	f.demand.set("requests_per_second", Reading{Value: 24, At: f.now})
	client := f.c.d.Scales.(*scalefake.FakeScaleClient)
	once := true
	client.PrependReactor("update", "*", func(a clienttesting.Action) (bool, runtime.Object, error) {
		if once {
			once = false
			f.scales.mu.Lock()
			f.scales.m["deployments/iris"].Spec.Replicas = 3
			f.scales.m["deployments/iris"].ResourceVersion = "7"
			f.scales.mu.Unlock()
		}
		return false, nil, nil
	})
	f.tick(0)
	if got := f.scales.replicas("deployments/iris"); got != 3 {
		t.Fatalf("replicas %d, want the HPA's 3 kept", got)
	}
	ev := f.events()
	if len(ev) != 1 || !strings.HasPrefix(ev[0], "Warning BurstFailed scaling deployments.apps iris from 1 to 6") {
		t.Fatalf("events %q, want one BurstFailed", ev)
	}
	if _, ok := f.floors.Get("model", "requests_per_second", labels.SelectorFromSet(labels.Set{"app": "iris"})); ok {
		t.Fatal("a failed burst set a floor")
	}
	f.demand.set("requests_per_second", Reading{Value: 24, At: f.now})
	f.tick(500 * time.Millisecond)
	if got := f.scales.replicas("deployments/iris"); got != 6 {
		t.Fatalf("replicas %d after the next round, want 6", got)
	}
	if ev := f.events(); len(ev) != 1 || !strings.HasSuffix(ev[0], ": 3 -> 6") {
		t.Fatalf("events %q, want a burst from 3 to 6", ev)
	}
}

// TestControllerRepeatedFailure: a failure that persists (here the /scale of
// a workload that does not exist) is one Warning Event, not one every
// Interval; it is counted every time.
func TestControllerRepeatedFailure(t *testing.T) {
	h := burstHPA("iris", "apps/v1", "Deployment", "")
	h.Spec.ScaleTargetRef.Name = "gone"
	f := newFixture(t, h)
	f.demand.set("requests_per_second", Reading{Value: 24, At: f.now})
	for range 5 {
		f.tick(500 * time.Millisecond)
	}
	ev := f.events()
	if len(ev) != 1 || !strings.HasPrefix(ev[0], "Warning BurstFailed reading /scale of deployments.apps gone") {
		t.Fatalf("events %q, want one BurstFailed", ev)
	}
	if v := testutil.ToFloat64(f.c.skipped.WithLabelValues("error")); v != 5 {
		t.Fatalf("mlscale_burst_skipped_total{reason=\"error\"} = %v, want 5", v)
	}
}

// Run evaluates when Wake says new demand arrived and again when the hold
// ends, not only every Interval (an hour here, so only those can act).
func TestControllerRunWakesAndEndsHold(t *testing.T) {
	f := newFixture(t, burstHPA("iris", "apps/v1", "Deployment", "threshold=200%,hold=1s"))
	wake := make(chan struct{})
	var mu sync.Mutex
	d := f.c.d
	d.Registerer = prometheus.NewRegistry()
	d.Wake = func() <-chan struct{} { mu.Lock(); defer mu.Unlock(); return wake }
	cfg := NewConfig()
	cfg.Interval = time.Hour
	c, err := New(cfg, d)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	// The step arrives: 24/s on one pod sized for 4/s, fresh for the 3 s
	// max-age beyond the 1 s hold.
	f.demand.set("requests_per_second", Reading{Value: 24, At: time.Now().Add(time.Second)})
	// Snapshots arrive every 300 ms for 600 ms, then stop: only the hold
	// timer can act at 1 s.
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; f.scales.replicas("deployments/iris") != 6; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("no burst 10 s after the demand arrived (updates %v, events %v)", f.scales.updates, f.events())
		}
		if i < 3 {
			mu.Lock()
			close(wake)
			wake = make(chan struct{})
			mu.Unlock()
		}
		time.Sleep(300 * time.Millisecond)
	}
	cancel()
	<-done
}
