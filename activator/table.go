package activator

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
)

// endpoint is one ready address:port and the requests it is answering now.
type endpoint struct {
	addr     string
	inflight atomic.Int64
}

// endpointSet is a Service's ready endpoints at one moment, by protocol:
// http on the port named "http" (or "http-*", or else the first TCP port
// not named grpc), grpc on the port named "grpc" (or "grpc-*"), Istio's
// naming convention. It is replaced, never changed, so the hot path reads
// it without a lock.
type endpointSet struct {
	http, grpc []*endpoint
}

func (s *endpointSet) of(grpc bool) []*endpoint {
	if s == nil {
		return nil
	}
	if grpc {
		return s.grpc
	}
	return s.http
}

// service is the activator's state for one fronted Service.
type service struct {
	ns, name, key string
	eps           atomic.Pointer[endpointSet]
	inflight      atomic.Int64
	arrivals      *arrivals
	counters      sync.Map // response code -> prometheus.Counter

	mu sync.Mutex
	// ready is closed (and replaced) whenever the endpoints change.
	ready  chan struct{}
	held   int
	policy HoldPolicy
	byAddr map[string]*endpoint // counters survive endpoint updates
	waking bool
}

func (s *service) endpoints(grpc bool) []*endpoint { return s.eps.Load().of(grpc) }

// table follows the fronted Services and their ready endpoints from
// informers. A Service is fronted when annotated (AnnotationEnabled), or
// when listed in fixed (the local gateway fronts exactly the activator's
// own Service this way, whatever its annotations).
type table struct {
	slices   cache.Indexer
	synced   []cache.InformerSynced
	def      HoldPolicy
	window   time.Duration
	log      *slog.Logger
	onChange func()            // a service's endpoints or held count changed
	onGone   func(addr string) // an endpoint left every set

	mu       sync.RWMutex
	services map[string]*service
}

const serviceIndex = "service"

func sliceServiceKey(obj any) ([]string, error) {
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	name := s.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return nil, nil
	}
	return []string{s.Namespace + "/" + name}, nil
}

// newTable registers its handlers on factory; start the factory afterwards.
// With fixed Services no Service informer is used.
func newTable(factory informers.SharedInformerFactory, fixed []string, def HoldPolicy, window time.Duration, log *slog.Logger, onChange func()) (*table, error) {
	t := &table{def: def, window: window, log: log, onChange: onChange, services: map[string]*service{}}
	sinf := factory.Discovery().V1().EndpointSlices().Informer()
	if err := sinf.AddIndexers(cache.Indexers{serviceIndex: sliceServiceKey}); err != nil {
		return nil, fmt.Errorf("indexing EndpointSlices: %w", err)
	}
	t.slices = sinf.GetIndexer()
	t.synced = append(t.synced, sinf.HasSynced)
	onSlice := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		keys, _ := sliceServiceKey(obj)
		for _, k := range keys {
			t.mu.RLock()
			st := t.services[k]
			t.mu.RUnlock()
			if st != nil {
				t.refresh(st)
			}
		}
	}
	if _, err := sinf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: onSlice, UpdateFunc: func(_, o any) { onSlice(o) }, DeleteFunc: onSlice,
	}); err != nil {
		return nil, fmt.Errorf("watching EndpointSlices: %w", err)
	}
	if len(fixed) > 0 {
		for _, k := range fixed {
			ns, name, ok := strings.Cut(k, "/")
			if !ok || ns == "" || name == "" {
				return nil, fmt.Errorf("fronted service %q: want namespace/name", k)
			}
			t.ensure(ns, name, def)
		}
		return t, nil
	}
	svcInf := factory.Core().V1().Services().Informer()
	t.synced = append(t.synced, svcInf.HasSynced)
	if _, err := svcInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    t.onService,
		UpdateFunc: func(_, o any) { t.onService(o) },
		DeleteFunc: func(o any) {
			if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = d.Obj
			}
			if s, ok := o.(*corev1.Service); ok {
				t.remove(s.Namespace + "/" + s.Name)
			}
		},
	}); err != nil {
		return nil, fmt.Errorf("watching Services: %w", err)
	}
	return t, nil
}

func (t *table) onService(obj any) {
	s, ok := obj.(*corev1.Service)
	if !ok {
		return
	}
	key := s.Namespace + "/" + s.Name
	if s.Annotations[AnnotationEnabled] != "true" {
		t.remove(key)
		return
	}
	p, err := ParsePolicy(s.Annotations, t.def)
	if err != nil {
		t.log.Warn("bad activator annotation on a Service; using the defaults for it", "service", key, "err", err)
	}
	t.ensure(s.Namespace, s.Name, p)
}

// ensure creates or updates a fronted service's state.
func (t *table) ensure(ns, name string, p HoldPolicy) {
	key := ns + "/" + name
	t.mu.Lock()
	st, ok := t.services[key]
	if !ok {
		st = &service{ns: ns, name: name, key: key, ready: make(chan struct{}), byAddr: map[string]*endpoint{}, arrivals: newArrivals(t.window)}
		t.services[key] = st
	}
	t.mu.Unlock()
	st.mu.Lock()
	st.policy = p
	st.mu.Unlock()
	if !ok {
		t.refresh(st)
	}
}

func (t *table) remove(key string) {
	t.mu.Lock()
	st, ok := t.services[key]
	delete(t.services, key)
	t.mu.Unlock()
	if ok {
		// Requests held for it wake up, find no endpoints, and wait out
		// their deadline.
		st.eps.Store(nil)
		st.mu.Lock()
		close(st.ready)
		st.ready = make(chan struct{})
		st.mu.Unlock()
		t.onChange()
	}
}

func (t *table) get(key string) *service {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.services[key]
}

func (t *table) all() []*service {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make([]*service, 0, len(t.services))
	for _, s := range t.services {
		out = append(out, s)
	}
	return out
}

// refresh recomputes st's ready endpoints from the EndpointSlice cache and
// wakes the requests held for it. The informer updates its indexer before
// it calls handlers, so this sees the event's slice.
func (t *table) refresh(st *service) {
	objs, _ := t.slices.ByIndex(serviceIndex, st.key)
	st.mu.Lock()
	set := &endpointSet{}
	seen := make(map[string]bool, len(st.byAddr))
	add := func(list *[]*endpoint, addr string) {
		if seen[addr] {
			return
		}
		seen[addr] = true
		e, ok := st.byAddr[addr]
		if !ok {
			e = &endpoint{addr: addr}
			st.byAddr[addr] = e
		}
		*list = append(*list, e)
	}
	for _, o := range objs {
		s := o.(*discoveryv1.EndpointSlice)
		if s.AddressType != discoveryv1.AddressTypeIPv4 && s.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		httpPort, grpcPort := slicePorts(s)
		for _, ep := range s.Endpoints {
			if (ep.Conditions.Ready != nil && !*ep.Conditions.Ready) || (ep.Conditions.Terminating != nil && *ep.Conditions.Terminating) {
				continue
			}
			for _, a := range ep.Addresses {
				if httpPort != 0 {
					add(&set.http, net.JoinHostPort(a, strconv.Itoa(httpPort)))
				}
				if grpcPort != 0 {
					add(&set.grpc, net.JoinHostPort(a, strconv.Itoa(grpcPort)))
				}
			}
		}
	}
	var gone []string
	for addr := range st.byAddr {
		if !seen[addr] {
			delete(st.byAddr, addr)
			gone = append(gone, addr)
		}
	}
	st.eps.Store(set)
	close(st.ready)
	st.ready = make(chan struct{})
	st.mu.Unlock()
	if t.onGone != nil {
		for _, addr := range gone {
			t.onGone(addr)
		}
	}
	t.onChange()
}

// slicePorts finds the http and grpc ports of an EndpointSlice.
func slicePorts(s *discoveryv1.EndpointSlice) (httpPort, grpcPort int) {
	first := 0
	for _, p := range s.Ports {
		if p.Port == nil || (p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP) {
			continue
		}
		name := ""
		if p.Name != nil {
			name = *p.Name
		}
		switch {
		case name == "grpc" || strings.HasPrefix(name, "grpc-"):
			if grpcPort == 0 {
				grpcPort = int(*p.Port)
			}
		case name == "http" || strings.HasPrefix(name, "http-"):
			if httpPort == 0 {
				httpPort = int(*p.Port)
			}
		default:
			if first == 0 {
				first = int(*p.Port)
			}
		}
	}
	if httpPort == 0 {
		httpPort = first
	}
	return httpPort, grpcPort
}

// leastOutstanding picks the endpoint answering the fewest requests now,
// starting the scan at a random one so ties spread out; tried endpoints are
// skipped. A full scan, not two random choices: fronted Services have few
// endpoints, and the scan is a few atomic loads.
func leastOutstanding(eps []*endpoint, tried []*endpoint) *endpoint {
	n := len(eps)
	if n == 0 {
		return nil
	}
	start := 0
	if n > 1 {
		start = rand.IntN(n)
	}
	var best *endpoint
	var bestN int64
next:
	for i := range n {
		e := eps[(start+i)%n]
		for _, x := range tried {
			if x == e {
				continue next
			}
		}
		if c := e.inflight.Load(); best == nil || c < bestN {
			best, bestN = e, c
		}
	}
	return best
}
