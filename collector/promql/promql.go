// Package promql serves the collector's metric names from a Prometheus that
// already scrapes the model servers (Amazon Managed Prometheus on EKS, a
// cluster Prometheus), through PromQL queries, for users who would rather
// not have the adapter scrape pods itself.
package promql

import (
	"context"
	"fmt"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	promapi "github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"

	"github.com/mlscale/mlscale/collector"
)

// Options say how pods appear in Prometheus and what window rates use.
type Options struct {
	// Window is the range of rate() and the histogram increases; it should
	// span at least four scrape intervals of that Prometheus.
	Window time.Duration
	// NamespaceLabel and PodLabel are the series labels naming the pod (as
	// kubernetes_sd relabeling usually writes them).
	NamespaceLabel, PodLabel string
	// Timeout bounds one query.
	Timeout time.Duration
}

// NewOptions returns the defaults: a 1 minute window (four scrapes at
// Prometheus' common 15 s interval), labels namespace and pod.
func NewOptions() Options {
	return Options{Window: time.Minute, NamespaceLabel: "namespace", PodLabel: "pod", Timeout: 10 * time.Second}
}

// Source implements collector.Reader with PromQL.
type Source struct {
	api   promv1.API
	opts  Options
	rules map[string]collector.Rule
	names []string
	pods  corelisters.PodLister
	now   func() time.Time
}

var _ collector.Reader = (*Source)(nil)

// New queries the Prometheus at client for rules. pods lists the cluster's
// pods: Prometheus series carry pod names, not pod labels, so a label
// selector is turned into the names of the ready pods it selects.
func New(client promapi.Client, rules []collector.Rule, pods corelisters.PodLister, opts Options) (*Source, error) {
	rules, err := collector.ValidateRules(rules)
	if err != nil {
		return nil, err
	}
	if opts.Window <= 0 || opts.PodLabel == "" || opts.NamespaceLabel == "" || opts.Timeout <= 0 {
		return nil, fmt.Errorf("promql source: window, timeout, pod and namespace labels are required (got %+v)", opts)
	}
	s := &Source{api: promv1.NewAPI(client), opts: opts, rules: map[string]collector.Rule{}, pods: pods, now: time.Now}
	for _, r := range rules {
		s.rules[r.Name] = r
		s.names = append(s.names, r.Name)
	}
	return s, nil
}

// Metrics implements collector.Reader.
func (s *Source) Metrics() []string { return append([]string(nil), s.names...) }

func (s *Source) rule(metric string) (collector.Rule, error) {
	r, ok := s.rules[metric]
	if !ok {
		return collector.Rule{}, fmt.Errorf("%w %q", collector.ErrUnknownMetric, metric)
	}
	return r, nil
}

// podNames lists the ready pods in namespace matching sel.
func (s *Source) podNames(namespace string, sel labels.Selector) ([]string, error) {
	if sel == nil {
		sel = labels.Everything()
	}
	pods, err := s.pods.Pods(namespace).List(sel)
	if err != nil {
		return nil, fmt.Errorf("listing pods in %q: %w", namespace, err)
	}
	var names []string
	for _, p := range pods {
		if _, ok := collector.PodReady(p); ok {
			names = append(names, p.Name)
		}
	}
	sort.Strings(names)
	return names, nil
}

// matchers builds the series selector body: the rule's labels, the
// namespace and the pod names.
func (s *Source) matchers(r collector.Rule, namespace string, pods []string) string {
	var m []string
	keys := make([]string, 0, len(r.Labels))
	for k := range r.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		m = append(m, k+"="+strconv.Quote(r.Labels[k]))
	}
	m = append(m, s.opts.NamespaceLabel+"="+strconv.Quote(namespace))
	quoted := make([]string, len(pods))
	for i, p := range pods {
		quoted[i] = regexp.QuoteMeta(p)
	}
	m = append(m, s.opts.PodLabel+"=~"+strconv.Quote(strings.Join(quoted, "|")))
	return strings.Join(m, ",")
}

// Query builds the PromQL for rule r over the named pods: one value per pod
// (perPod) or one for all of them as the rule aggregates workloads. The
// formulas are the collector's (collector.Rule.PromQL), so both sources
// compute the same thing.
func (s *Source) Query(r collector.Rule, namespace string, pods []string, perPod bool) string {
	sel := "{" + s.matchers(r, namespace, pods) + "}"
	return r.PromQL(sel, model.Duration(s.opts.Window).String(), s.opts.NamespaceLabel+", "+s.opts.PodLabel, perPod)
}

func (s *Source) query(ctx context.Context, q string) (model.Vector, time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	ts := s.now()
	v, _, _, err := s.api.Query(ctx, q, ts)
	if err != nil {
		return nil, ts, fmt.Errorf("prometheus query %s: %w", q, err)
	}
	vec, ok := v.(model.Vector)
	if !ok {
		return nil, ts, fmt.Errorf("prometheus query %s: got %s, want a vector", q, v.Type())
	}
	return vec, ts, nil
}

// PodValues implements collector.Reader.
func (s *Source) PodValues(ctx context.Context, metric, namespace string, sel labels.Selector) ([]collector.PodValue, error) {
	r, err := s.rule(metric)
	if err != nil {
		return nil, err
	}
	pods, err := s.podNames(namespace, sel)
	if err != nil {
		return nil, err
	}
	if len(pods) == 0 {
		return nil, collector.NoData(metric, namespace, sel, 0)
	}
	vec, _, err := s.query(ctx, s.Query(r, namespace, pods, true))
	if err != nil {
		return nil, err
	}
	window := s.opts.Window
	if r.Compute == collector.ComputeLast {
		window = 0
	}
	var out []collector.PodValue
	for _, smp := range vec {
		v := float64(smp.Value)
		if math.IsNaN(v) || math.IsInf(v, 0) {
			continue // 0/0: no requests in the window; not a zero
		}
		out = append(out, collector.PodValue{
			Namespace: string(smp.Metric[model.LabelName(s.opts.NamespaceLabel)]),
			Pod:       string(smp.Metric[model.LabelName(s.opts.PodLabel)]),
			Value:     v,
			Timestamp: smp.Timestamp.Time(),
			Window:    window,
		})
	}
	if len(out) == 0 {
		return nil, collector.NoData(metric, namespace, sel, len(pods))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Pod < out[j].Pod })
	return out, nil
}

// AggregateValue implements collector.Aggregator.
func (s *Source) AggregateValue(ctx context.Context, metric, namespace string, sel labels.Selector) (collector.Aggregate, error) {
	r, err := s.rule(metric)
	if err != nil {
		return collector.Aggregate{}, err
	}
	pods, err := s.podNames(namespace, sel)
	if err != nil {
		return collector.Aggregate{}, err
	}
	if len(pods) == 0 {
		return collector.Aggregate{}, collector.NoData(metric, namespace, sel, 0)
	}
	vec, _, err := s.query(ctx, s.Query(r, namespace, pods, false))
	if err != nil {
		return collector.Aggregate{}, err
	}
	if len(vec) != 1 || math.IsNaN(float64(vec[0].Value)) || math.IsInf(float64(vec[0].Value), 0) {
		return collector.Aggregate{}, collector.NoData(metric, namespace, sel, len(pods))
	}
	window := s.opts.Window
	if r.Compute == collector.ComputeLast {
		window = 0
	}
	// Prometheus does not say how many pods had series; report the pods asked about.
	return collector.Aggregate{Value: float64(vec[0].Value), Pods: len(pods), Timestamp: vec[0].Timestamp.Time(), Window: window}, nil
}
