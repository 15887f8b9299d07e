package api

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// AdminPortName is the activator Service's port that serves Path.
const AdminPortName = "admin"

// Watcher keeps one demand stream open to every activator replica and sums
// their snapshots per Service: the activator is stateless and each replica
// sees only the requests routed to it.
type Watcher struct {
	client *http.Client
	log    *slog.Logger

	mu      sync.Mutex
	streams map[string]*stream // by URL
	updated chan struct{}
}

type stream struct {
	cancel context.CancelFunc
	snap   Snapshot
	at     time.Time // when snap arrived; zero before the first
}

// NewWatcher returns a Watcher with no replicas; Set or Discover adds them.
func NewWatcher(log *slog.Logger) *Watcher {
	if log == nil {
		log = slog.Default()
	}
	return &Watcher{
		// No overall timeout: the stream is long-lived; Watch cuts a
		// silent one.
		client:  &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext, ResponseHeaderTimeout: 5 * time.Second}},
		log:     log,
		streams: map[string]*stream{},
		updated: make(chan struct{}),
	}
}

// Set makes urls the replicas watched (each the full URL of a replica's
// stream), starting and stopping streams under ctx.
func (w *Watcher) Set(ctx context.Context, urls []string) {
	want := map[string]bool{}
	for _, u := range urls {
		want[u] = true
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for u, s := range w.streams {
		if !want[u] {
			s.cancel()
			delete(w.streams, u)
		}
	}
	for u := range want {
		if _, ok := w.streams[u]; ok {
			continue
		}
		sctx, cancel := context.WithCancel(ctx)
		s := &stream{cancel: cancel}
		w.streams[u] = s
		go w.run(sctx, u, s)
	}
	w.notifyLocked()
}

// run keeps one replica's stream open until ctx ends, reconnecting with
// back-off.
func (w *Watcher) run(ctx context.Context, url string, s *stream) {
	backoff := 100 * time.Millisecond
	failing := false
	for ctx.Err() == nil {
		got := false
		err := Watch(ctx, w.client, url, func(snap Snapshot) {
			got = true
			w.mu.Lock()
			s.snap, s.at = snap, time.Now()
			w.notifyLocked()
			w.mu.Unlock()
		})
		if ctx.Err() != nil {
			return
		}
		// A replica whose stream broke (killed, restarting) no longer
		// holds the requests it reported: forget them at once.
		w.mu.Lock()
		s.at = time.Time{}
		w.notifyLocked()
		w.mu.Unlock()
		if got {
			backoff = 100 * time.Millisecond
			failing = false
		}
		if !failing {
			w.log.Warn("activator demand stream failed; reconnecting", "url", url, "err", err)
			failing = true
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

func (w *Watcher) notifyLocked() {
	close(w.updated)
	w.updated = make(chan struct{})
}

// Updated returns a channel closed at the next snapshot from any replica.
func (w *Watcher) Updated() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.updated
}

// Demand sums namespace/service's demand over the replicas with a snapshot
// younger than StaleAfter (ReadyEndpoints is their largest view). ok is
// false when none of them reports the Service (not fronted, or no replica
// answering): the demand is unknown, not zero, so a typo in a Service name
// never reads as "no demand, scale to zero".
func (w *Watcher) Demand(namespace, service string) (d Demand, ok bool) {
	d, _, ok = w.DemandAt(namespace, service)
	return d, ok
}

// DemandAt is Demand with when the oldest snapshot in the sum reached the
// watcher: the sum is as fresh as that.
func (w *Watcher) DemandAt(namespace, service string) (d Demand, at time.Time, ok bool) {
	d = Demand{Namespace: namespace, Service: service}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, s := range w.streams {
		if s.at.IsZero() || time.Since(s.at) > StaleAfter {
			continue
		}
		for _, sd := range s.snap.Services {
			if sd.Namespace == namespace && sd.Service == service {
				if !ok || s.at.Before(at) {
					at = s.at
				}
				ok = true
				d.ArrivalsPerSecond += sd.ArrivalsPerSecond
				d.RecentArrivalsPerSecond += sd.RecentArrivalsPerSecond
				d.Held += sd.Held
				d.Inflight += sd.Inflight
				d.ReadyEndpoints = max(d.ReadyEndpoints, sd.ReadyEndpoints)
			}
		}
	}
	return d, at, ok
}

// Window is the longest arrival-rate window among the fresh snapshots
// (the activator's --demand-window), 0 when none is fresh.
func (w *Watcher) Window() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out time.Duration
	for _, s := range w.streams {
		if !s.at.IsZero() && time.Since(s.at) <= StaleAfter {
			out = max(out, time.Duration(s.snap.WindowSeconds*float64(time.Second)))
		}
	}
	return out
}

// Pending is Demand's held and in-flight requests (the scaler's
// PendingSource).
func (w *Watcher) Pending(namespace, service string) (held, inflight int, ok bool) {
	d, ok := w.Demand(namespace, service)
	return int(d.Held), int(d.Inflight), ok
}

// Replicas returns the watched URLs with a fresh snapshot, sorted.
func (w *Watcher) Replicas() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for u, s := range w.streams {
		if !s.at.IsZero() && time.Since(s.at) <= StaleAfter {
			out = append(out, u)
		}
	}
	sort.Strings(out)
	return out
}

// Discover watches every ready endpoint of Service namespace/name (the
// activator's) on its port named AdminPortName, following its
// EndpointSlices until ctx ends. It needs list and watch on EndpointSlices
// in that namespace.
func (w *Watcher) Discover(ctx context.Context, client kubernetes.Interface, namespace, name string) error {
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = discoveryv1.LabelServiceName + "=" + name }))
	inf := factory.Discovery().V1().EndpointSlices().Informer()
	resync := func(any) {
		var urls []string
		for _, o := range inf.GetStore().List() {
			urls = append(urls, AdminURLs(o.(*discoveryv1.EndpointSlice))...)
		}
		w.Set(ctx, urls)
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    resync,
		UpdateFunc: func(_, o any) { resync(o) },
		DeleteFunc: resync,
	}); err != nil {
		return fmt.Errorf("watching the EndpointSlices of %s/%s: %w", namespace, name, err)
	}
	factory.Start(ctx.Done())
	return nil
}

// AdminURLs returns the demand stream URL of every endpoint in s, ready or
// not: a draining replica (not ready, terminating) still holds requests
// whose demand counts, and one not listening yet is simply retried.
func AdminURLs(s *discoveryv1.EndpointSlice) []string {
	port := 0
	for _, p := range s.Ports {
		if p.Name != nil && *p.Name == AdminPortName && p.Port != nil {
			port = int(*p.Port)
		}
	}
	if port == 0 {
		return nil
	}
	var out []string
	for _, ep := range s.Endpoints {
		for _, a := range ep.Addresses {
			out = append(out, "http://"+net.JoinHostPort(a, strconv.Itoa(port))+Path)
		}
	}
	return out
}
