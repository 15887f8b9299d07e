// Package proxy is a userspace service proxy for the local cluster, like
// kube-proxy's old userspace mode: for every Service port it listens on the
// Service's cluster IP and port itself, and splices each accepted connection
// to a ready endpoint taken from the Service's EndpointSlices, round-robin.
//
// The cluster IPs must be local addresses of the machine (the local cluster
// routes its whole service range to lo with an RTN_LOCAL route), so a plain
// listen on ClusterIP:port works without iptables.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
)

const (
	// dialTimeout bounds one dial to an endpoint; all of them are local.
	dialTimeout = 2 * time.Second
	// maxDialAttempts is how many endpoints a connection tries.
	maxDialAttempts = 3
	// retryInterval is how soon a failed listen is retried when no
	// informer event comes first.
	retryInterval = 5 * time.Second
)

// Proxy proxies Service cluster IPs to their endpoints.
type Proxy struct {
	services       corelisters.ServiceLister
	slices         discoverylisters.EndpointSliceLister
	servicesSynced cache.InformerSynced
	slicesSynced   cache.InformerSynced
	log            io.Writer
	logMu          sync.Mutex

	kick chan struct{}

	mu        sync.Mutex
	listeners map[portKey]*listener
	conns     map[net.Conn]struct{}
	udpLogged map[string]bool
	wg        sync.WaitGroup
}

// portKey names one listening socket: a Service port on one cluster IP.
type portKey struct {
	namespace, name, port, ip string
}

func (k portKey) String() string {
	return fmt.Sprintf("service %s/%s port %q on %s", k.namespace, k.name, k.port, k.ip)
}

type listener struct {
	key  portKey
	addr string
	l    net.Listener
	next atomic.Uint64 // round-robin position
}

// New registers Service and EndpointSlice informers on factory and returns a
// proxy that follows them. The caller starts the factory (before or after
// Run); Run waits for both caches to sync. log receives one line per
// listener change and per error; nil discards them.
func New(factory informers.SharedInformerFactory, log io.Writer) *Proxy {
	svcInf := factory.Core().V1().Services()
	sliceInf := factory.Discovery().V1().EndpointSlices()
	p := &Proxy{
		services:       svcInf.Lister(),
		slices:         sliceInf.Lister(),
		servicesSynced: svcInf.Informer().HasSynced,
		slicesSynced:   sliceInf.Informer().HasSynced,
		log:            log,
		kick:           make(chan struct{}, 1),
		listeners:      map[portKey]*listener{},
		conns:          map[net.Conn]struct{}{},
		udpLogged:      map[string]bool{},
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { p.trigger() },
		UpdateFunc: func(any, any) { p.trigger() },
		DeleteFunc: func(any) { p.trigger() },
	}
	// AddEventHandler only fails on a stopped informer; the factory is not
	// started yet.
	_, _ = svcInf.Informer().AddEventHandler(handler)
	_, _ = sliceInf.Informer().AddEventHandler(handler)
	return p
}

func (p *Proxy) logf(format string, args ...any) {
	if p.log == nil {
		return
	}
	p.logMu.Lock()
	defer p.logMu.Unlock()
	fmt.Fprintf(p.log, "proxy: "+format+"\n", args...)
}

func (p *Proxy) trigger() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// Run keeps the listeners in line with the Services until ctx ends, then
// closes every listener and every proxied connection and returns nil. It
// returns an error only if the caches never sync before ctx ends.
func (p *Proxy) Run(ctx context.Context) error {
	if !cache.WaitForCacheSync(ctx.Done(), p.servicesSynced, p.slicesSynced) {
		return errors.New("service proxy: Service and EndpointSlice caches did not sync")
	}
	defer p.shutdown()
	retry := time.NewTimer(0)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-p.kick:
		case <-retry.C:
		}
		if failed := p.sync(); failed {
			retry.Reset(retryInterval)
		}
	}
}

func (p *Proxy) shutdown() {
	p.mu.Lock()
	for k, l := range p.listeners {
		l.l.Close()
		delete(p.listeners, k)
	}
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// desired lists the address every Service port should listen on.
func (p *Proxy) desired() map[portKey]string {
	svcs, err := p.services.List(labels.Everything())
	if err != nil {
		p.logf("listing services: %v", err)
		return nil
	}
	want := map[portKey]string{}
	for _, s := range svcs {
		if !proxied(s) {
			continue
		}
		if s.Namespace == "default" && s.Name == "kubernetes" && !p.hasEndpoints(s) {
			continue
		}
		for _, ip := range clusterIPs(s) {
			for _, sp := range s.Spec.Ports {
				if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP {
					p.logUDPOnce(s, sp)
					continue
				}
				want[portKey{s.Namespace, s.Name, sp.Name, ip}] = net.JoinHostPort(ip, strconv.Itoa(int(sp.Port)))
			}
		}
	}
	return want
}

func proxied(s *corev1.Service) bool {
	switch s.Spec.Type {
	case "", corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer:
	default:
		return false
	}
	return s.Spec.ClusterIP != "" && s.Spec.ClusterIP != corev1.ClusterIPNone
}

func clusterIPs(s *corev1.Service) []string {
	if len(s.Spec.ClusterIPs) > 0 {
		return s.Spec.ClusterIPs
	}
	return []string{s.Spec.ClusterIP}
}

func (p *Proxy) logUDPOnce(s *corev1.Service, sp corev1.ServicePort) {
	k := fmt.Sprintf("%s/%s/%s/%d", s.Namespace, s.Name, sp.Protocol, sp.Port)
	p.mu.Lock()
	seen := p.udpLogged[k]
	p.udpLogged[k] = true
	p.mu.Unlock()
	if !seen {
		p.logf("service %s/%s port %d/%s: only TCP is proxied, ignoring it", s.Namespace, s.Name, sp.Port, sp.Protocol)
	}
}

func (p *Proxy) hasEndpoints(s *corev1.Service) bool {
	slices, err := p.slicesFor(s.Namespace, s.Name)
	if err != nil {
		return false
	}
	for _, sl := range slices {
		if len(sl.Endpoints) > 0 {
			return true
		}
	}
	return false
}

// sync closes listeners that are no longer wanted (or moved) and opens the
// missing ones. It reports whether some listen failed.
func (p *Proxy) sync() (failed bool) {
	want := p.desired()
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, l := range p.listeners {
		if addr, ok := want[k]; !ok || addr != l.addr {
			l.l.Close()
			delete(p.listeners, k)
			p.logf("%s: stopped listening on %s", k, l.addr)
		}
	}
	for k, addr := range want {
		if _, ok := p.listeners[k]; ok {
			continue
		}
		nl, err := net.Listen("tcp", addr)
		if err != nil {
			p.logf("%s: listening on %s: %v (retrying)", k, addr, err)
			failed = true
			continue
		}
		l := &listener{key: k, addr: addr, l: nl}
		p.listeners[k] = l
		p.logf("%s: listening on %s", k, addr)
		p.wg.Add(1)
		go p.serve(l)
	}
	return failed
}

func (p *Proxy) serve(l *listener) {
	defer p.wg.Done()
	for {
		c, err := l.l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			p.logf("%s: accept: %v", l.key, err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		p.track(c)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.untrack(c)
			p.handle(l, c)
		}()
	}
}

// track registers a proxied connection so shutdown can close it.
func (p *Proxy) track(c net.Conn) {
	p.mu.Lock()
	p.conns[c] = struct{}{}
	p.mu.Unlock()
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// handle dials an endpoint for client and splices the two; with no ready
// endpoint, or none that answers, it just closes client.
func (p *Proxy) handle(l *listener, client net.Conn) {
	defer client.Close()
	backend := p.dial(l)
	if backend == nil {
		return
	}
	defer backend.Close()
	p.track(backend)
	defer p.untrack(backend)
	splice(client, backend)
}

func (p *Proxy) dial(l *listener) net.Conn {
	eps := p.endpoints(l.key.namespace, l.key.name, l.key.port)
	if len(eps) == 0 {
		p.logf("%s: no ready endpoint, closing the connection", l.key)
		return nil
	}
	start := int(l.next.Add(1)-1) % len(eps)
	for i := 0; i < len(eps) && i < maxDialAttempts; i++ {
		ep := eps[(start+i)%len(eps)]
		c, err := net.DialTimeout("tcp", ep, dialTimeout)
		if err == nil {
			return c
		}
		p.logf("%s: dialing endpoint %s: %v", l.key, ep, err)
	}
	return nil
}

func (p *Proxy) slicesFor(namespace, name string) ([]*discoveryv1.EndpointSlice, error) {
	sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: name})
	return p.slices.EndpointSlices(namespace).List(sel)
}

// endpoints lists host:port of the ready, non-terminating endpoints of the
// Service's port named portName, sorted so the round-robin order is stable.
func (p *Proxy) endpoints(namespace, name, portName string) []string {
	slices, err := p.slicesFor(namespace, name)
	if err != nil {
		p.logf("listing endpoint slices of %s/%s: %v", namespace, name, err)
		return nil
	}
	seen := map[string]bool{}
	var out []string
	for _, sl := range slices {
		if sl.AddressType == discoveryv1.AddressTypeFQDN {
			continue
		}
		port, ok := slicePort(sl, portName)
		if !ok {
			continue
		}
		for _, ep := range sl.Endpoints {
			if !usable(ep) || len(ep.Addresses) == 0 {
				continue
			}
			hp := net.JoinHostPort(ep.Addresses[0], strconv.Itoa(int(port)))
			if !seen[hp] {
				seen[hp] = true
				out = append(out, hp)
			}
		}
	}
	sort.Strings(out)
	return out
}

func slicePort(sl *discoveryv1.EndpointSlice, portName string) (int32, bool) {
	for _, sp := range sl.Ports {
		name := ""
		if sp.Name != nil {
			name = *sp.Name
		}
		if name != portName || sp.Port == nil {
			continue
		}
		if sp.Protocol != nil && *sp.Protocol != corev1.ProtocolTCP {
			continue
		}
		return *sp.Port, true
	}
	return 0, false
}

// usable: ready (nil means ready, per the API) and not terminating.
func usable(ep discoveryv1.Endpoint) bool {
	if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
		return false
	}
	return ep.Conditions.Terminating == nil || !*ep.Conditions.Terminating
}

// splice copies both ways; each side's EOF half-closes the other side's
// writes, and an error on either closes both.
func splice(client, backend net.Conn) {
	var wg sync.WaitGroup
	pipe := func(dst, src net.Conn) {
		defer wg.Done()
		if _, err := io.Copy(dst, src); err != nil {
			client.Close()
			backend.Close()
			return
		}
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			dst.Close()
		}
	}
	wg.Add(2)
	go pipe(backend, client)
	go pipe(client, backend)
	wg.Wait()
}
