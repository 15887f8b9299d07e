package burst

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	autoscalinglisters "k8s.io/client-go/listers/autoscaling/v2"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/scale"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/mlscale/mlscale/collector"
)

// Event reasons on the HPA.
const (
	ReasonBurst        = "Burst"
	ReasonBurstFailed  = "BurstFailed"
	ReasonBadBurstSpec = "InvalidBurstAnnotation"
)

// Config tunes the Controller. NewConfig gives the defaults; AddFlags binds
// them.
type Config struct {
	// Interval between evaluations of every opted-in HPA.
	Interval time.Duration
	// MaxAge: a reading older than this is stale, and nothing scales on it.
	MaxAge time.Duration
	// HPASyncPeriod is the controller-manager's
	// --horizontal-pod-autoscaler-sync-period; a burst's floor lasts one of
	// these plus FloorMargin, so at least one HPA sync sees it.
	HPASyncPeriod, FloorMargin time.Duration
	// Tolerance is the controller-manager's --horizontal-pod-autoscaler-tolerance.
	Tolerance float64
}

// NewConfig returns the defaults: evaluate every 500 ms (half the collector's
// scrape interval), readings at most 3 s old, Kubernetes' 15 s HPA sync and
// 10% tolerance, and floors held 5 s past one sync.
func NewConfig() Config {
	return Config{Interval: 500 * time.Millisecond, MaxAge: 3 * time.Second, HPASyncPeriod: 15 * time.Second, FloorMargin: 5 * time.Second, Tolerance: DefaultTolerance}
}

// AddFlags binds c's fields to fs, each name prefixed (e.g. "burst-").
func (c *Config) AddFlags(fs *flag.FlagSet, prefix string) {
	fs.DurationVar(&c.Interval, prefix+"interval", c.Interval, "how often opted-in HPAs ("+Annotation+") are evaluated")
	fs.DurationVar(&c.MaxAge, prefix+"max-age", c.MaxAge, "a demand reading older than this is stale: no burst on it")
	fs.DurationVar(&c.HPASyncPeriod, prefix+"hpa-sync-period", c.HPASyncPeriod, "the controller-manager's --horizontal-pod-autoscaler-sync-period (how long the adapter serves a burst's demand, plus the margin)")
	fs.DurationVar(&c.FloorMargin, prefix+"floor-margin", c.FloorMargin, "extra time the burst's demand is served past one HPA sync period")
	fs.Float64Var(&c.Tolerance, prefix+"tolerance", c.Tolerance, "the controller-manager's --horizontal-pod-autoscaler-tolerance")
}

// Validate lists every problem with c.
func (c Config) Validate() []error {
	var errs []error
	if c.Interval <= 0 {
		errs = append(errs, fmt.Errorf("burst interval must be positive, got %s", c.Interval))
	}
	if c.MaxAge <= 0 {
		errs = append(errs, fmt.Errorf("burst max-age must be positive, got %s", c.MaxAge))
	}
	if c.HPASyncPeriod <= 0 {
		errs = append(errs, fmt.Errorf("burst hpa-sync-period must be positive, got %s", c.HPASyncPeriod))
	}
	if c.FloorMargin < 0 {
		errs = append(errs, fmt.Errorf("burst floor-margin must not be negative, got %s", c.FloorMargin))
	}
	if c.Tolerance < 0 || c.Tolerance >= 1 {
		errs = append(errs, fmt.Errorf("burst tolerance must be in [0, 1), got %v", c.Tolerance))
	}
	return errs
}

// Deps are the Controller's collaborators.
type Deps struct {
	// HPAs lists the HPAs (an informer's lister, all watched namespaces).
	HPAs autoscalinglisters.HorizontalPodAutoscalerLister
	// Pods lists pods, to count the workload's ready ones.
	Pods corelisters.PodLister
	// Scales reads and writes /scale; Mapper maps scaleTargetRef's kind to
	// its resource.
	Scales scale.ScalesGetter
	Mapper meta.RESTMapper
	// Resolver maps an Object metric's described workload to its pods.
	Resolver collector.SelectorResolver
	// Demand is read for each metric; Floors receives each burst's demand.
	Demand Demand
	Floors *Floors
	// Recorder emits the Events on the HPA.
	Recorder record.EventRecorder
	// Registerer gets mlscale_burst_scale_ups_total.
	Registerer prometheus.Registerer
	// Wake, when set, returns a channel closed when new demand arrives
	// (api.Watcher.Updated): the HPAs are evaluated then too, at most every
	// WakeGap, not only every Interval.
	Wake func() <-chan struct{}
}

// WakeGap is the shortest gap between two evaluations woken by new demand:
// the activator sends a moving rate every api.Poll (100 ms).
const WakeGap = 100 * time.Millisecond

// Controller bursts opted-in HPAs' workloads. Run it once per process.
type Controller struct {
	cfg Config
	d   Deps
	now func() time.Time

	scaleUps *prometheus.CounterVec
	skipped  *prometheus.CounterVec

	mu      sync.Mutex
	state   map[string]State
	scales  map[string]cachedScale // HPA -> its target's /scale, read within Interval
	badAnn  map[string]string      // HPA -> annotation value already reported
	lastErr map[string]string      // HPA -> the last evaluation error reported
}

// New builds a Controller.
func New(cfg Config, d Deps) (*Controller, error) {
	if errs := cfg.Validate(); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if d.HPAs == nil || d.Pods == nil || d.Scales == nil || d.Mapper == nil || d.Demand == nil || d.Floors == nil || d.Recorder == nil {
		return nil, errors.New("burst: HPAs, Pods, Scales, Mapper, Demand, Floors and Recorder are required")
	}
	reg := d.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	f := promauto.With(reg)
	return &Controller{
		cfg: cfg, d: d, now: time.Now,
		scaleUps: f.NewCounterVec(prometheus.CounterOpts{
			Name: "mlscale_burst_scale_ups_total",
			Help: "Workloads scaled up by a burst, by the HPA's namespace and name.",
		}, []string{"namespace", "hpa"}),
		skipped: f.NewCounterVec(prometheus.CounterOpts{
			Name: "mlscale_burst_skipped_total",
			Help: "Evaluations of opted-in HPAs that could not decide, by reason (stale: no fresh demand; error: reading the HPA's target failed).",
		}, []string{"reason"}),
		state:   map[string]State{},
		scales:  map[string]cachedScale{},
		badAnn:  map[string]string{},
		lastErr: map[string]string{},
	}, nil
}

// cachedScale is a /scale read and when.
type cachedScale struct {
	sc *autoscalingv1.Scale
	at time.Time
}

// Run evaluates every opted-in HPA each Interval, when Wake says new demand
// arrived (at most every WakeGap), and at the moment a hold in progress
// would be satisfied, until ctx ends.
func (c *Controller) Run(ctx context.Context) {
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	hold := time.NewTimer(time.Hour)
	hold.Stop()
	defer hold.Stop()
	var wake <-chan struct{}
	if c.d.Wake != nil {
		wake = c.d.Wake()
	}
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-hold.C:
		case <-wake:
			wake = c.d.Wake()
			if d := WakeGap - time.Since(last); d > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(d):
				}
			}
		}
		last = time.Now()
		if next := c.EvaluateAll(ctx); !next.IsZero() {
			hold.Reset(max(time.Until(next), 0))
		}
	}
}

// EvaluateAll evaluates each opted-in HPA once. It returns the earliest
// moment a hold in progress will be satisfied (zero: none).
func (c *Controller) EvaluateAll(ctx context.Context) time.Time {
	hpas, err := c.d.HPAs.List(labels.Everything())
	if err != nil {
		klog.ErrorS(err, "Listing HPAs for burst")
		return time.Time{}
	}
	var next time.Time
	seen := map[string]bool{}
	for _, h := range hpas {
		if _, ok := h.Annotations[Annotation]; !ok {
			continue
		}
		key := h.Namespace + "/" + h.Name
		seen[key] = true
		cctx, cancel := context.WithTimeout(ctx, max(c.cfg.Interval, time.Second))
		if h := c.Evaluate(cctx, h); !h.IsZero() && (next.IsZero() || h.Before(next)) {
			next = h
		}
		cancel()
	}
	c.mu.Lock()
	for k := range c.state {
		if !seen[k] {
			delete(c.state, k)
			delete(c.lastErr, k)
			delete(c.scales, k)
		}
	}
	c.mu.Unlock()
	return next
}

// target is one metric of an HPA the burst reads, with where to read it.
type target struct {
	Target
	q Query
}

// targets picks the HPA's metrics the collector can serve: Pods metrics
// (over the workload's pods), Object metrics on a Deployment,
// SeldonDeployment or Service, and External metrics (over their selector).
// Resource metrics come from metrics-server and are left to the HPA: they
// can only make it ask for more than the burst, never fewer.
func (c *Controller) targets(ctx context.Context, h *autoscalingv2.HorizontalPodAutoscaler, podSel labels.Selector) ([]target, error) {
	var out []target
	for _, m := range h.Spec.Metrics {
		switch m.Type {
		case autoscalingv2.PodsMetricSourceType:
			if m.Pods == nil || m.Pods.Target.AverageValue == nil || (m.Pods.Metric.Selector != nil && len(m.Pods.Metric.Selector.MatchLabels)+len(m.Pods.Metric.Selector.MatchExpressions) > 0) {
				continue
			}
			out = append(out, target{
				Target{Metric: m.Pods.Metric.Name, PerPod: true, Value: m.Pods.Target.AverageValue.AsApproximateFloat64()},
				Query{Namespace: h.Namespace, Metric: m.Pods.Metric.Name, Selector: podSel}})
		case autoscalingv2.ObjectMetricSourceType:
			if m.Object == nil {
				continue
			}
			t, ok := valueTarget(m.Object.Target)
			if !ok || c.d.Resolver == nil {
				continue
			}
			obj := m.Object.DescribedObject
			sel, err := c.d.Resolver.SelectorFor(ctx, obj.Kind, h.Namespace, obj.Name)
			if errors.Is(err, collector.ErrUnsupportedKind) {
				continue
			}
			if err != nil {
				return nil, err
			}
			t.Metric = m.Object.Metric.Name
			q := Query{Namespace: h.Namespace, Metric: t.Metric, Selector: sel}
			if k, _ := collector.NormalizeKind(obj.Kind); k == collector.KindService {
				q.Service = obj.Name
			}
			out = append(out, target{t, q})
		case autoscalingv2.ExternalMetricSourceType:
			if m.External == nil {
				continue
			}
			t, ok := valueTarget(m.External.Target)
			if !ok {
				continue
			}
			sel, err := metav1.LabelSelectorAsSelector(m.External.Metric.Selector)
			if err != nil {
				return nil, fmt.Errorf("external metric %s: selector: %w", m.External.Metric.Name, err)
			}
			t.Metric = m.External.Metric.Name
			out = append(out, target{t, Query{Namespace: h.Namespace, Metric: t.Metric, Selector: sel}})
		}
	}
	return out, nil
}

func valueTarget(t autoscalingv2.MetricTarget) (Target, bool) {
	switch {
	case t.Type == autoscalingv2.AverageValueMetricType && t.AverageValue != nil:
		return Target{PerPod: true, Value: t.AverageValue.AsApproximateFloat64()}, true
	case t.Type == autoscalingv2.ValueMetricType && t.Value != nil:
		return Target{Value: t.Value.AsApproximateFloat64()}, true
	}
	return Target{}, false
}

// scale reads the /scale of h's target: the one read within Interval when
// fresh is false and there is one (an evaluation woken by demand every
// 100 ms reads the API server no more often than the ticker's would).
func (c *Controller) scale(ctx context.Context, key string, gr schema.GroupResource, ns, name string, fresh bool) (*autoscalingv1.Scale, bool, error) {
	now := c.now()
	c.mu.Lock()
	cs, ok := c.scales[key]
	c.mu.Unlock()
	if !fresh && ok && now.Sub(cs.at) < c.cfg.Interval && cs.sc.Name == name {
		return cs.sc.DeepCopy(), true, nil
	}
	sc, err := c.d.Scales.Scales(ns).Get(ctx, gr, name, metav1.GetOptions{})
	if err != nil {
		return nil, false, err
	}
	c.mu.Lock()
	c.scales[key] = cachedScale{sc: sc.DeepCopy(), at: now}
	c.mu.Unlock()
	return sc, false, nil
}

func (c *Controller) forgetScale(key string) {
	c.mu.Lock()
	delete(c.scales, key)
	c.mu.Unlock()
}

// Evaluate decides for one HPA and applies a burst. It returns when the
// hold in progress will be satisfied (zero: none in progress).
func (c *Controller) Evaluate(ctx context.Context, h *autoscalingv2.HorizontalPodAutoscaler) time.Time {
	key := h.Namespace + "/" + h.Name
	ann := h.Annotations[Annotation]
	p, err := ParsePolicy(ann)
	if err != nil {
		c.mu.Lock()
		reported := c.badAnn[key] == ann
		c.badAnn[key] = ann
		c.mu.Unlock()
		if !reported {
			c.d.Recorder.Event(h, corev1.EventTypeWarning, ReasonBadBurstSpec, err.Error())
		}
		return time.Time{}
	}
	ref := h.Spec.ScaleTargetRef
	gr, err := c.resource(ref)
	if err != nil {
		c.fail(h, "error", fmt.Errorf("resolving scaleTargetRef %s %s: %w", ref.Kind, ref.Name, err))
		return time.Time{}
	}
	sc, cached, err := c.scale(ctx, key, gr, h.Namespace, ref.Name, false)
	if err != nil {
		c.fail(h, "error", fmt.Errorf("reading /scale of %s %s: %w", gr, ref.Name, err))
		return time.Time{}
	}
	podSel, err := labels.Parse(sc.Status.Selector)
	if err != nil || sc.Status.Selector == "" {
		c.fail(h, "error", fmt.Errorf("/scale of %s %s has no usable selector %q", gr, ref.Name, sc.Status.Selector))
		return time.Time{}
	}
	ts, err := c.targets(ctx, h, podSel)
	if err != nil {
		c.fail(h, "error", err)
		return time.Time{}
	}
	in := Input{
		Now:       c.now(),
		Current:   sc.Spec.Replicas,
		Min:       1,
		Max:       h.Spec.MaxReplicas,
		Behavior:  h.Spec.Behavior,
		Tolerance: c.cfg.Tolerance,
		MaxAge:    c.cfg.MaxAge,
	}
	if h.Spec.MinReplicas != nil {
		in.Min = *h.Spec.MinReplicas
	}
	in.Ready, err = c.ready(h.Namespace, podSel)
	if err != nil {
		c.fail(h, "error", err)
		return time.Time{}
	}
	for _, t := range ts {
		in.Targets = append(in.Targets, t.Target)
		r, err := c.d.Demand.Demand(ctx, t.q)
		if err != nil {
			klog.V(4).InfoS("No demand reading", "hpa", klog.KObj(h), "err", err)
			r = Reading{}
		}
		in.Readings = append(in.Readings, r)
	}
	c.mu.Lock()
	st0 := c.state[key]
	c.mu.Unlock()
	d, st := Decide(p, in, st0)
	if d.Burst(in) && cached {
		// Write only over a /scale read now: its replicas and
		// resourceVersion, and the decision over its count.
		fresh, _, err := c.scale(ctx, key, gr, h.Namespace, ref.Name, true)
		if err != nil {
			c.fail(h, "error", fmt.Errorf("reading /scale of %s %s: %w", gr, ref.Name, err))
			return time.Time{}
		}
		sc = fresh
		if in.Current != sc.Spec.Replicas {
			in.Current = sc.Spec.Replicas
			d, st = Decide(p, in, st0)
		}
	}
	defer func() {
		c.mu.Lock()
		c.state[key] = st
		c.mu.Unlock()
	}()
	if d.Crossed {
		// The first moment of a possible burst: with the "Burst" line
		// below, the timeline from demand to /scale (TestBurst reads both).
		klog.InfoS("Burst threshold reached; holding", "hpa", klog.KObj(h), "ratio", fmt.Sprintf("%.2f", d.Ratio),
			"demand", in.Readings[d.Metric].Value, "readingAge", in.Now.Sub(in.Readings[d.Metric].At).Round(time.Millisecond), "hold", p.Hold)
	}
	if !d.Burst(in) {
		c.clearErr(key)
		if d.Stale {
			c.skipped.WithLabelValues("stale").Inc()
		}
		klog.V(5).InfoS("No burst", "hpa", klog.KObj(h), "why", d.Reason)
		if d.HoldEnds.After(in.Now) {
			return d.HoldEnds
		}
		return time.Time{}
	}
	defer c.forgetScale(key)
	from := sc.Spec.Replicas
	sc.Spec.Replicas = d.Desired
	// Update carries the resourceVersion just read: if the HPA (or anyone)
	// changed the replicas since, this fails and the next evaluation
	// starts from their count instead of overwriting it.
	if _, err := c.d.Scales.Scales(h.Namespace).Update(ctx, gr, sc, metav1.UpdateOptions{}); err != nil {
		c.fail(h, "error", fmt.Errorf("scaling %s %s from %d to %d: %w", gr, ref.Name, from, d.Desired, err))
		return time.Time{}
	}
	c.clearErr(key)
	st = st.Scaled(in.Now, from, d.Desired)
	until := in.Now.Add(c.cfg.HPASyncPeriod + c.cfg.FloorMargin)
	for i, t := range ts {
		c.d.Floors.Set(t.q.Namespace, t.q.Metric, t.q.Selector, in.Readings[i].Value, until)
	}
	c.scaleUps.WithLabelValues(h.Namespace, h.Name).Inc()
	c.d.Recorder.Event(h, corev1.EventTypeNormal, ReasonBurst, d.Reason)
	klog.InfoS("Burst", "hpa", klog.KObj(h), "target", klog.KRef(h.Namespace, ref.Name), "from", from, "to", d.Desired, "why", d.Reason)
	return time.Time{}
}

func (c *Controller) clearErr(key string) {
	c.mu.Lock()
	delete(c.lastErr, key)
	c.mu.Unlock()
}

// fail counts a failed evaluation; the log line and the Warning Event come
// once per distinct error per HPA, not every Interval.
func (c *Controller) fail(h *autoscalingv2.HorizontalPodAutoscaler, reason string, err error) {
	c.skipped.WithLabelValues(reason).Inc()
	key := h.Namespace + "/" + h.Name
	c.mu.Lock()
	repeated := c.lastErr[key] == err.Error()
	c.lastErr[key] = err.Error()
	c.mu.Unlock()
	if repeated {
		klog.V(4).InfoS("Burst evaluation failed again", "hpa", klog.KObj(h), "err", err)
		return
	}
	klog.ErrorS(err, "Burst evaluation failed", "hpa", klog.KObj(h))
	c.d.Recorder.Event(h, corev1.EventTypeWarning, ReasonBurstFailed, err.Error())
}

// resource maps a scaleTargetRef to the resource whose /scale to use.
func (c *Controller) resource(ref autoscalingv2.CrossVersionObjectReference) (schema.GroupResource, error) {
	gv, err := schema.ParseGroupVersion(ref.APIVersion)
	if err != nil {
		return schema.GroupResource{}, err
	}
	m, err := c.d.Mapper.RESTMapping(schema.GroupKind{Group: gv.Group, Kind: ref.Kind}, gv.Version)
	if err != nil {
		return schema.GroupResource{}, err
	}
	return m.Resource.GroupResource(), nil
}

// ready counts the pods sel picks in namespace that are Ready and not being
// deleted.
func (c *Controller) ready(namespace string, sel labels.Selector) (int32, error) {
	pods, err := c.d.Pods.Pods(namespace).List(sel)
	if err != nil {
		return 0, fmt.Errorf("listing pods for %s: %w", sel, err)
	}
	var n int32
	for _, p := range pods {
		if _, ok := collector.PodReady(p); ok {
			n++
		}
	}
	return n, nil
}
