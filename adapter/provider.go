// Package adapter serves the collector's values as Kubernetes metrics APIs:
// custom.metrics.k8s.io (pods, and deployments, seldondeployments and
// services as the aggregate over their pods) and external.metrics.k8s.io
// (an aggregate over the pods a label selector picks), on
// sigs.k8s.io/custom-metrics-apiserver.
package adapter

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/metrics/pkg/apis/custom_metrics"
	"k8s.io/metrics/pkg/apis/external_metrics"
	"sigs.k8s.io/custom-metrics-apiserver/pkg/provider"

	"github.com/mlscale/mlscale/collector"
)

// The resources custom metrics are served for.
var (
	PodsResource              = schema.GroupResource{Resource: "pods"}
	DeploymentsResource       = schema.GroupResource{Group: "apps", Resource: "deployments"}
	SeldonDeploymentsResource = schema.GroupResource{Group: "machinelearning.seldon.io", Resource: "seldondeployments"}
	ServicesResource          = schema.GroupResource{Resource: "services"}
)

// workloads maps the object resources to their kind and API version, for
// the described object in answers.
var workloads = map[schema.GroupResource]struct{ kind, apiVersion string }{
	DeploymentsResource:       {collector.KindDeployment, "apps/v1"},
	SeldonDeploymentsResource: {collector.KindSeldonDeployment, "machinelearning.seldon.io/v1"},
	ServicesResource:          {collector.KindService, "v1"},
}

// Provider implements the custom and external metrics providers over a
// collector.Reader: the scraping collector, or the PromQL source.
type Provider struct {
	src      collector.Reader
	resolver collector.SelectorResolver
	latency  *prometheus.HistogramVec
	demand   DemandReader // see WithDemand; nil: no demand metrics
}

var (
	_ provider.CustomMetricsProvider   = (*Provider)(nil)
	_ provider.ExternalMetricsProvider = (*Provider)(nil)
)

// NewProvider serves src; resolver maps workloads to their pods. reg gets
// the API latency histogram.
func NewProvider(src collector.Reader, resolver collector.SelectorResolver, reg prometheus.Registerer) *Provider {
	return &Provider{
		src:      src,
		resolver: resolver,
		latency: promauto.With(reg).NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mlscale_adapter_request_duration_seconds",
			Help:    "Time to answer one metrics API call, by API, call and result.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}, []string{"api", "call", "result"}),
	}
}

func (p *Provider) observe(api, call string, start time.Time, err error) {
	result := "ok"
	switch {
	case apierrors.IsNotFound(err):
		result = "not_found"
	case err != nil:
		result = "error"
	}
	p.latency.WithLabelValues(api, call, result).Observe(time.Since(start).Seconds())
}

// quantity keeps micro precision, so a latency of 0.0004 s is not served
// as 0 as milli-units would.
func quantity(v float64) resource.Quantity {
	if math.Abs(v) < 9e12 {
		return *resource.NewScaledQuantity(int64(math.Round(v*1e6)), resource.Micro)
	}
	return *resource.NewQuantity(int64(v), resource.DecimalSI)
}

func windowSeconds(w time.Duration) *int64 {
	if w <= 0 {
		return nil
	}
	s := int64(math.Round(w.Seconds()))
	return &s
}

// apiError turns a source error into what the API returns: typed 404s for
// what is simply not there, and for anything else a generic internal error,
// with the detail in the log only.
func apiError(err error, gr schema.GroupResource, metric, object string, sel labels.Selector) error {
	switch {
	case errors.Is(err, collector.ErrUnknownMetric), errors.Is(err, collector.ErrUnsupportedKind):
		return provider.NewMetricNotFoundError(gr, metric)
	case errors.Is(err, collector.ErrWorkloadNotFound):
		return apierrors.NewNotFound(gr, object)
	case errors.Is(err, collector.ErrNoData):
		klog.V(4).InfoS("No data", "metric", metric, "resource", gr.String(), "object", object, "err", err)
		if object == "" && sel != nil {
			return provider.NewMetricNotFoundForSelectorError(gr, metric, "", sel)
		}
		return provider.NewMetricNotFoundForError(gr, metric, object)
	}
	klog.ErrorS(err, "Reading metric failed", "metric", metric, "resource", gr.String(), "object", object)
	return apierrors.NewInternalError(fmt.Errorf("reading metric %s failed; the adapter's log has the cause", metric))
}

// checkMetricSelector refuses metric label selectors: the served metrics
// carry no labels, so a non-empty one can only match nothing.
func checkMetricSelector(gr schema.GroupResource, metric, object string, ms labels.Selector) error {
	if ms != nil && !ms.Empty() {
		return provider.NewMetricNotFoundForSelectorError(gr, metric, object, ms)
	}
	return nil
}

// GetMetricByName implements provider.CustomMetricsProvider.
func (p *Provider) GetMetricByName(ctx context.Context, name types.NamespacedName, info provider.CustomMetricInfo, metricSelector labels.Selector) (mv *custom_metrics.MetricValue, err error) {
	defer func(start time.Time) { p.observe("custom", "by_name", start, err) }(time.Now())
	gr := info.GroupResource
	if err := checkMetricSelector(gr, info.Metric, name.Name, metricSelector); err != nil {
		return nil, err
	}
	if mv, handled, err := p.serviceDemand(name, info); handled {
		return mv, err
	}
	if gr == PodsResource {
		vals, err := p.src.PodValues(ctx, info.Metric, name.Namespace, labels.Everything())
		if err != nil && !errors.Is(err, collector.ErrNoData) {
			return nil, apiError(err, gr, info.Metric, name.Name, nil)
		}
		for _, v := range vals {
			if v.Pod == name.Name {
				mv := podMetric(v, info.Metric)
				return &mv, nil
			}
		}
		return nil, provider.NewMetricNotFoundForError(gr, info.Metric, name.Name)
	}
	w, ok := workloads[gr]
	if !ok {
		return nil, provider.NewMetricNotFoundError(gr, info.Metric)
	}
	sel, err := p.resolver.SelectorFor(ctx, w.kind, name.Namespace, name.Name)
	if err != nil {
		return nil, apiError(err, gr, info.Metric, name.Name, nil)
	}
	agg, err := p.src.AggregateValue(ctx, info.Metric, name.Namespace, sel)
	if err != nil {
		return nil, apiError(err, gr, info.Metric, name.Name, nil)
	}
	return &custom_metrics.MetricValue{
		DescribedObject: custom_metrics.ObjectReference{Kind: w.kind, APIVersion: w.apiVersion, Namespace: name.Namespace, Name: name.Name},
		Metric:          custom_metrics.MetricIdentifier{Name: info.Metric},
		Timestamp:       metav1.NewTime(agg.Timestamp),
		WindowSeconds:   windowSeconds(agg.Window),
		Value:           quantity(agg.Value),
	}, nil
}

func podMetric(v collector.PodValue, metric string) custom_metrics.MetricValue {
	return custom_metrics.MetricValue{
		DescribedObject: custom_metrics.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: v.Namespace, Name: v.Pod},
		Metric:          custom_metrics.MetricIdentifier{Name: metric},
		Timestamp:       metav1.NewTime(v.Timestamp),
		WindowSeconds:   windowSeconds(v.Window),
		Value:           quantity(v.Value),
	}
}

// GetMetricBySelector implements provider.CustomMetricsProvider. Only pods
// are listed by selector (what an HPA's Pods metric asks); a workload is
// asked for by name.
func (p *Provider) GetMetricBySelector(ctx context.Context, namespace string, selector labels.Selector, info provider.CustomMetricInfo, metricSelector labels.Selector) (list *custom_metrics.MetricValueList, err error) {
	defer func(start time.Time) { p.observe("custom", "by_selector", start, err) }(time.Now())
	gr := info.GroupResource
	if err := checkMetricSelector(gr, info.Metric, "", metricSelector); err != nil {
		return nil, err
	}
	if gr != PodsResource {
		if _, ok := workloads[gr]; ok {
			return nil, apierrors.NewBadRequest(fmt.Sprintf("%s are served by name only (the aggregate over their pods); list pods by selector instead", gr.String()))
		}
		return nil, provider.NewMetricNotFoundError(gr, info.Metric)
	}
	vals, err := p.src.PodValues(ctx, info.Metric, namespace, selector)
	if err != nil {
		return nil, apiError(err, gr, info.Metric, "", selector)
	}
	list = &custom_metrics.MetricValueList{Items: make([]custom_metrics.MetricValue, len(vals))}
	for i, v := range vals {
		list.Items[i] = podMetric(v, info.Metric)
	}
	return list, nil
}

// ListAllMetrics implements provider.CustomMetricsProvider. The list is
// static (the config's rules), so it is cheap.
func (p *Provider) ListAllMetrics() []provider.CustomMetricInfo {
	names := p.src.Metrics()
	out := make([]provider.CustomMetricInfo, 0, 4*len(names))
	for _, n := range names {
		for _, gr := range []schema.GroupResource{PodsResource, DeploymentsResource, SeldonDeploymentsResource, ServicesResource} {
			out = append(out, provider.CustomMetricInfo{GroupResource: gr, Namespaced: true, Metric: n})
		}
	}
	return append(out, p.demandMetricInfos()...)
}

var externalResource = schema.GroupResource{Group: "external.metrics.k8s.io", Resource: "metrics"}

// GetExternalMetric implements provider.ExternalMetricsProvider: the metric
// aggregated over the pods in namespace that metricSelector picks (pod
// labels, e.g. seldon-deployment-id=iris).
func (p *Provider) GetExternalMetric(ctx context.Context, namespace string, metricSelector labels.Selector, info provider.ExternalMetricInfo) (list *external_metrics.ExternalMetricValueList, err error) {
	defer func(start time.Time) { p.observe("external", "get", start, err) }(time.Now())
	agg, err := p.src.AggregateValue(ctx, info.Metric, namespace, metricSelector)
	if err != nil {
		return nil, apiError(err, externalResource, info.Metric, "", metricSelector)
	}
	// Echo the selector's equality terms as the value's labels, as
	// prometheus-adapter does with series labels.
	var lbls map[string]string
	if metricSelector != nil {
		if reqs, ok := metricSelector.Requirements(); ok {
			for _, r := range reqs {
				vals := r.Values().UnsortedList()
				if len(vals) == 1 && (r.Operator() == selection.Equals || r.Operator() == selection.DoubleEquals || r.Operator() == selection.In) {
					if lbls == nil {
						lbls = map[string]string{}
					}
					lbls[r.Key()] = vals[0]
				}
			}
		}
	}
	return &external_metrics.ExternalMetricValueList{Items: []external_metrics.ExternalMetricValue{{
		MetricName:    info.Metric,
		MetricLabels:  lbls,
		Timestamp:     metav1.NewTime(agg.Timestamp),
		WindowSeconds: windowSeconds(agg.Window),
		Value:         quantity(agg.Value),
	}}}, nil
}

// ListAllExternalMetrics implements provider.ExternalMetricsProvider.
func (p *Provider) ListAllExternalMetrics() []provider.ExternalMetricInfo {
	names := p.src.Metrics()
	out := make([]provider.ExternalMetricInfo, len(names))
	for i, n := range names {
		out[i] = provider.ExternalMetricInfo{Metric: n}
	}
	return out
}
