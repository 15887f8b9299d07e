package collector

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// Annotations a pod may carry to say where its metrics are, as Prometheus'
// kubernetes_sd examples use them.
const (
	AnnotationScrape = "prometheus.io/scrape"
	AnnotationPort   = "prometheus.io/port"
	AnnotationPath   = "prometheus.io/path"
	AnnotationScheme = "prometheus.io/scheme"
)

// WorkloadRef names a workload whose pods are scraped.
type WorkloadRef struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// DiscoveryConfig says which pods are scraped and where.
type DiscoveryConfig struct {
	// Namespaces to watch; empty means all.
	Namespaces []string `json:"namespaces,omitempty"`
	// Selector is a label selector (kubectl syntax). A pod is scraped if it
	// matches Selector or belongs to one of Workloads; with neither set, pods
	// annotated prometheus.io/scrape: "true" are scraped.
	Selector string `json:"selector,omitempty"`
	// Workloads whose pods are scraped (Deployment, SeldonDeployment, Service).
	Workloads []WorkloadRef `json:"workloads,omitempty"`
	// Port, Path and Scheme of the metrics endpoint unless the pod's
	// prometheus.io/* annotations say otherwise.
	Port   int    `json:"port,omitempty"`
	Path   string `json:"path,omitempty"`
	Scheme string `json:"scheme,omitempty"`
	// Resync re-evaluates every pod this often (catches changed workload
	// selectors); pod events themselves apply at once.
	Resync metav1.Duration `json:"resync,omitempty"`
}

func (c *DiscoveryConfig) setDefaults() {
	if c.Port == 0 {
		c.Port = 9000
	}
	if c.Path == "" {
		c.Path = "/metrics"
	}
	if c.Scheme == "" {
		c.Scheme = "http"
	}
	if c.Resync.Duration == 0 {
		c.Resync.Duration = 30 * time.Second
	}
}

// TargetSink receives the pods discovery finds; Collector is one.
type TargetSink interface {
	Upsert(Target)
	Remove(namespace, name string)
}

// Discovery watches pods with informers and keeps a TargetSink's targets to
// the ready pods selected by its config.
type Discovery struct {
	cfg       DiscoveryConfig
	sel       labels.Selector // nil if none configured
	sink      TargetSink
	factories []informers.SharedInformerFactory
	synced    []cache.InformerSynced
	resolvers map[string]*ListerResolver // by namespace ("" = all)
}

// NewDiscovery registers pod informers (and Deployment and Service
// informers if workloads are named) for cfg's namespaces on client.
func NewDiscovery(client kubernetes.Interface, cfg DiscoveryConfig, sink TargetSink) (*Discovery, error) {
	cfg.setDefaults()
	d := &Discovery{cfg: cfg, sink: sink, resolvers: map[string]*ListerResolver{}}
	if cfg.Selector != "" {
		sel, err := labels.Parse(cfg.Selector)
		if err != nil {
			return nil, fmt.Errorf("discovery: field \"selector\": %w", err)
		}
		d.sel = sel
	}
	watched := map[string]bool{}
	for _, ns := range cfg.Namespaces {
		watched[ns] = true
	}
	for i, w := range cfg.Workloads {
		if _, err := NormalizeKind(w.Kind); err != nil {
			return nil, fmt.Errorf("discovery: workloads[%d]: field \"kind\": %w", i, err)
		}
		if w.Name == "" || w.Namespace == "" {
			return nil, fmt.Errorf("discovery: workloads[%d]: fields \"namespace\" and \"name\" are required", i)
		}
		if len(watched) > 0 && !watched[w.Namespace] {
			return nil, fmt.Errorf("discovery: workloads[%d]: namespace %q is not in namespaces %v", i, w.Namespace, cfg.Namespaces)
		}
	}
	namespaces := cfg.Namespaces
	if len(namespaces) == 0 {
		namespaces = []string{metav1.NamespaceAll}
	}
	for _, ns := range namespaces {
		opts := []informers.SharedInformerOption{informers.WithNamespace(ns)}
		// With only a selector, let the API server filter; workloads need
		// every pod of the namespace to match against.
		if d.sel != nil && len(cfg.Workloads) == 0 {
			s := d.sel.String()
			opts = append(opts, informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = s }))
		}
		f := informers.NewSharedInformerFactoryWithOptions(client, cfg.Resync.Duration, opts...)
		inf := f.Core().V1().Pods().Informer()
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { d.sync(obj) },
			UpdateFunc: func(_, obj any) { d.sync(obj) },
			DeleteFunc: d.delete,
		}); err != nil {
			return nil, fmt.Errorf("discovery: adding pod event handler: %w", err)
		}
		d.synced = append(d.synced, inf.HasSynced)
		if len(cfg.Workloads) > 0 {
			r := NewListerResolver(f)
			d.resolvers[ns] = r
			lister := f.Core().V1().Pods().Lister()
			// A named workload appearing or changing its selector
			// re-evaluates the pods of its namespace at once.
			resync := func(obj any) {
				m, err := meta.Accessor(obj)
				if err != nil || !d.named(m.GetNamespace(), m.GetName()) {
					return
				}
				pods, err := lister.Pods(m.GetNamespace()).List(labels.Everything())
				if err != nil {
					return
				}
				for _, p := range pods {
					d.sync(p)
				}
			}
			h := cache.ResourceEventHandlerFuncs{AddFunc: resync, UpdateFunc: func(_, o any) { resync(o) }, DeleteFunc: func(o any) {
				if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
					o = t.Obj
				}
				resync(o)
			}}
			for _, wi := range []cache.SharedIndexInformer{f.Apps().V1().Deployments().Informer(), f.Core().V1().Services().Informer()} {
				if _, err := wi.AddEventHandler(h); err != nil {
					return nil, fmt.Errorf("discovery: adding workload event handler: %w", err)
				}
				d.synced = append(d.synced, wi.HasSynced)
			}
		}
		d.factories = append(d.factories, f)
	}
	return d, nil
}

// Start starts the informers; they stop with ctx.
func (d *Discovery) Start(ctx context.Context) {
	for _, f := range d.factories {
		f.Start(ctx.Done())
	}
}

// HasSynced reports whether every informer has its initial list.
func (d *Discovery) HasSynced() bool {
	for _, s := range d.synced {
		if !s() {
			return false
		}
	}
	return true
}

// named reports whether namespace/name is a configured workload.
func (d *Discovery) named(namespace, name string) bool {
	for _, w := range d.cfg.Workloads {
		if w.Namespace == namespace && w.Name == name {
			return true
		}
	}
	return false
}

func (d *Discovery) delete(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	if p, ok := obj.(*corev1.Pod); ok {
		d.sink.Remove(p.Namespace, p.Name)
	}
}

func (d *Discovery) sync(obj any) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	t, ok := d.targetFor(p)
	if !ok {
		d.sink.Remove(p.Namespace, p.Name)
		return
	}
	d.sink.Upsert(t)
}

// selected reports whether the config picks pod p (readiness aside).
func (d *Discovery) selected(p *corev1.Pod) bool {
	if p.Annotations[AnnotationScrape] == "false" {
		return false
	}
	if d.sel == nil && len(d.cfg.Workloads) == 0 {
		return p.Annotations[AnnotationScrape] == "true"
	}
	set := labels.Set(p.Labels)
	if d.sel != nil && d.sel.Matches(set) {
		return true
	}
	for _, w := range d.cfg.Workloads {
		if w.Namespace != p.Namespace {
			continue
		}
		r := d.resolvers[p.Namespace]
		if r == nil {
			r = d.resolvers[metav1.NamespaceAll]
		}
		sel, err := r.SelectorFor(context.Background(), w.Kind, w.Namespace, w.Name)
		if err != nil {
			klog.V(4).InfoS("Workload not resolved", "kind", w.Kind, "workload", klog.KRef(w.Namespace, w.Name), "err", err)
			continue
		}
		if sel.Matches(set) {
			return true
		}
	}
	return false
}

// PodReady says whether p serves: running, not terminating, its Ready
// condition true; since is when it became ready (its start when the
// condition has no transition time). Discovery scrapes such pods and the
// PromQL source reads theirs.
func PodReady(p *corev1.Pod) (since time.Time, ok bool) {
	if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
		return time.Time{}, false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			if c.Status != corev1.ConditionTrue {
				return time.Time{}, false
			}
			since = c.LastTransitionTime.Time
			if since.IsZero() && p.Status.StartTime != nil {
				since = p.Status.StartTime.Time
			}
			return since, true
		}
	}
	return time.Time{}, false
}

// targetFor returns p's target if p is selected, running, ready, not
// terminating, and has an IP.
func (d *Discovery) targetFor(p *corev1.Pod) (Target, bool) {
	if p.Status.PodIP == "" || !d.selected(p) {
		return Target{}, false
	}
	readySince, ready := PodReady(p)
	if !ready {
		return Target{}, false
	}
	port := d.cfg.Port
	if s := p.Annotations[AnnotationPort]; s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 || n > 65535 {
			klog.ErrorS(nil, "Ignoring bad port annotation", "pod", klog.KObj(p), "annotation", AnnotationPort, "value", s)
		} else {
			port = n
		}
	}
	path := d.cfg.Path
	if s := p.Annotations[AnnotationPath]; s != "" {
		path = s
	}
	scheme := d.cfg.Scheme
	if s := p.Annotations[AnnotationScheme]; s == "http" || s == "https" {
		scheme = s
	}
	u := url.URL{Scheme: scheme, Host: net.JoinHostPort(p.Status.PodIP, strconv.Itoa(port)), Path: path}
	return Target{
		Namespace:  p.Namespace,
		Name:       p.Name,
		Labels:     labels.Set(p.Labels),
		URL:        u.String(),
		ReadySince: readySince,
	}, true
}
