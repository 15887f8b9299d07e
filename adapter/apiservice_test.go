package adapter

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"
)

// apiServiceObj is an APIService as the kube-apiserver returns it; a nil svc
// is a built-in (local) group, an empty available leaves the status out.
func apiServiceObj(name string, svc map[string]any, available, reason string) *unstructured.Unstructured {
	spec := map[string]any{"group": apiServiceGroup(name), "version": "v1beta1", "service": nil}
	if svc != nil {
		spec["service"] = svc
	}
	o := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiregistration.k8s.io/v1",
		"kind":       "APIService",
		"metadata":   map[string]any{"name": name},
		"spec":       spec,
	}}
	if available != "" {
		o.Object["status"] = map[string]any{"conditions": []any{map[string]any{
			"type": "Available", "status": available, "reason": reason, "message": "all checks passed or not: " + reason,
			"lastTransitionTime": "2026-11-25T15:00:00Z",
		}}}
	}
	return o
}

func service(ns, name string) map[string]any {
	return map[string]any{"namespace": ns, "name": name, "port": int64(443)}
}

func newFakeDynamic(objs ...runtime.Object) *dynamicfake.FakeDynamicClient {
	return dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{APIServicesResource: "APIServiceList"}, objs...)
}

func forbidGets(c *dynamicfake.FakeDynamicClient) {
	c.PrependReactor("get", "apiservices", func(a k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "apiregistration.k8s.io", Resource: "apiservices"},
			a.(k8stesting.GetAction).GetName(), errors.New(`User "system:serviceaccount:mlscale:mlscale-adapter" cannot get resource "apiservices"`))
	})
}

func TestCheckAPIServiceOwner(t *testing.T) {
	const api = ExternalMetricsAPIService
	for _, tc := range []struct {
		name      string
		objs      []runtime.Object
		forbidden bool
		want      Owner
		server    string
		wantErr   func(error) bool
	}{
		{
			name:   "owned by us",
			objs:   []runtime.Object{apiServiceObj(api, service("mlscale", "mlscale-adapter"), "True", "Passed")},
			want:   Owner{APIService: api, Found: true, Namespace: "mlscale", Name: "mlscale-adapter", Ours: true, Available: "True", AvailableReason: "Passed", AvailableMessage: "all checks passed or not: Passed"},
			server: "mlscale/mlscale-adapter",
		},
		{
			name:   "owned by keda",
			objs:   []runtime.Object{apiServiceObj(api, service("keda", "keda-metrics-apiserver"), "False", "FailedDiscoveryCheck")},
			want:   Owner{APIService: api, Found: true, Namespace: "keda", Name: "keda-metrics-apiserver", Available: "False", AvailableReason: "FailedDiscoveryCheck", AvailableMessage: "all checks passed or not: FailedDiscoveryCheck"},
			server: "keda/keda-metrics-apiserver",
		},
		{
			name:   "same name in another namespace is not us",
			objs:   []runtime.Object{apiServiceObj(api, service("other", "mlscale-adapter"), "", "")},
			want:   Owner{APIService: api, Found: true, Namespace: "other", Name: "mlscale-adapter"},
			server: "other/mlscale-adapter",
		},
		{
			name:   "built-in (spec.service nil)",
			objs:   []runtime.Object{apiServiceObj(api, nil, "True", "Local")},
			want:   Owner{APIService: api, Found: true, Local: true, Available: "True", AvailableReason: "Local", AvailableMessage: "all checks passed or not: Local"},
			server: "local",
		},
		{
			name:   "absent",
			objs:   []runtime.Object{apiServiceObj("v1beta1.custom.metrics.k8s.io", service("mlscale", "mlscale-adapter"), "True", "Passed")},
			want:   Owner{APIService: api},
			server: "absent",
		},
		{
			name: "malformed spec.service",
			objs: []runtime.Object{func() runtime.Object {
				o := apiServiceObj(api, nil, "", "")
				o.Object["spec"].(map[string]any)["service"] = "keda/keda-metrics-apiserver"
				return o
			}()},
			want:    Owner{APIService: api, Found: true},
			wantErr: func(err error) bool { return strings.Contains(err.Error(), "spec.service is a string, not an object") },
		},
		{
			name:      "forbidden",
			objs:      []runtime.Object{apiServiceObj(api, service("mlscale", "mlscale-adapter"), "True", "Passed")},
			forbidden: true,
			want:      Owner{APIService: api},
			wantErr:   apierrors.IsForbidden,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newFakeDynamic(tc.objs...)
			if tc.forbidden {
				forbidGets(c)
			}
			got, err := CheckAPIServiceOwner(context.Background(), c, api, "mlscale", "mlscale-adapter")
			switch {
			case tc.wantErr == nil && err != nil:
				t.Fatalf("error: %v", err)
			case tc.wantErr != nil && (err == nil || !tc.wantErr(err)):
				t.Fatalf("error = %v, want a matching one", err)
			case err != nil && !strings.Contains(err.Error(), "reading APIService "+api):
				t.Errorf("error %q does not say what was being read", err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("owner (-want +got):\n%s", d)
			}
			if tc.server != "" && got.Server() != tc.server {
				t.Errorf("Server() = %q, want %q", got.Server(), tc.server)
			}
		})
	}
}

// ownedGauge returns mlscale_adapter_apiservice_owned for api, and whether
// the series exists.
func ownedGauge(t *testing.T, reg *prometheus.Registry, api string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "mlscale_adapter_apiservice_owned" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "apiservice" && l.GetValue() == api {
					return m.GetGauge().GetValue(), true
				}
			}
		}
	}
	return 0, false
}

// TestOwnerWatchCheck walks one APIService through the states a cluster goes
// through (ours, KEDA installed over it, RBAC missing, deleted, restored)
// and checks that each change is reported once, with the right level,
// message and gauge.
func TestOwnerWatchCheck(t *testing.T) {
	const api = ExternalMetricsAPIService
	ctx := context.Background()
	c := newFakeDynamic()
	forbidden := false
	c.PrependReactor("get", "apiservices", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if !forbidden {
			return false, nil, nil
		}
		return true, nil, apierrors.NewForbidden(APIServicesResource.GroupResource(), a.(k8stesting.GetAction).GetName(), errors.New("no RBAC"))
	})
	apis := c.Resource(APIServicesResource)
	put := func(o *unstructured.Unstructured) {
		t.Helper()
		if _, err := apis.Get(ctx, o.GetName(), metav1.GetOptions{}); apierrors.IsNotFound(err) {
			_, err = apis.Create(ctx, o, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			return
		}
		if _, err := apis.Update(ctx, o, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewRegistry()
	w := NewOwnerWatch(c, api, "mlscale", "mlscale-adapter", reg)

	type step struct {
		name      string
		setup     func()
		changed   bool
		warn      bool
		msg       []string // substrings of the message
		gauge     float64
		gaugeSeen bool
	}
	ours := service("mlscale", "mlscale-adapter")
	for _, s := range []step{
		{name: "absent at start", setup: func() {}, changed: true, msg: []string{"APIService v1beta1.external.metrics.k8s.io does not exist"}, gaugeSeen: true},
		{name: "absent again", setup: func() {}, changed: false, gaugeSeen: true},
		{name: "ours, not yet available", setup: func() { put(apiServiceObj(api, ours, "False", "MissingEndpoints")) },
			changed: true, msg: []string{"served by this adapter (mlscale/mlscale-adapter", "Available=False (MissingEndpoints:"}, gauge: 1, gaugeSeen: true},
		{name: "ours, available", setup: func() { put(apiServiceObj(api, ours, "True", "Passed")) },
			changed: true, msg: []string{"Available=True"}, gauge: 1, gaugeSeen: true},
		{name: "ours, unchanged", setup: func() {}, changed: false, gauge: 1, gaugeSeen: true},
		{name: "KEDA takes it", setup: func() { put(apiServiceObj(api, service("keda", "keda-metrics-apiserver"), "True", "Passed")) },
			changed: true, warn: true, msg: []string{
				"external.metrics.k8s.io is served by keda/keda-metrics-apiserver (APIService v1beta1.external.metrics.k8s.io), not by this adapter (mlscale/mlscale-adapter): only one server can own an API group.",
				"--enable-external-metrics=false (manifests/components/keda does)",
			}, gaugeSeen: true},
		{name: "KEDA's goes unavailable: no second warning", setup: func() {
			put(apiServiceObj(api, service("keda", "keda-metrics-apiserver"), "False", "FailedDiscoveryCheck"))
		},
			changed: false, warn: true, gaugeSeen: true},
		{name: "RBAC removed", setup: func() { forbidden = true },
			changed: true, msg: []string{"cannot tell who serves external.metrics.k8s.io", "forbidden", "carrying on", "needs get on apiservices.apiregistration.k8s.io"}},
		{name: "still forbidden", setup: func() {}, changed: false},
		{name: "RBAC back, built-in", setup: func() { forbidden = false; put(apiServiceObj(api, nil, "True", "Local")) },
			changed: true, warn: true, msg: []string{"served by the kube-apiserver itself"}, gaugeSeen: true},
		{name: "deleted", setup: func() {
			if err := apis.Delete(ctx, api, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}, changed: true, msg: []string{"does not exist"}, gaugeSeen: true},
	} {
		s.setup()
		ev, changed := w.Check(ctx)
		if changed != s.changed {
			t.Errorf("%s: changed = %v, want %v (message %q)", s.name, changed, s.changed, ev.Msg)
		}
		if ev.Warn != s.warn {
			t.Errorf("%s: warn = %v, want %v (message %q)", s.name, ev.Warn, s.warn, ev.Msg)
		}
		for _, m := range s.msg {
			if !strings.Contains(ev.Msg, m) {
				t.Errorf("%s: message %q lacks %q", s.name, ev.Msg, m)
			}
		}
		v, seen := ownedGauge(t, reg, api)
		if seen != s.gaugeSeen || v != s.gauge {
			t.Errorf("%s: gauge = %v (present %v), want %v (present %v)", s.name, v, seen, s.gauge, s.gaugeSeen)
		}
	}
}

// TestOwnerWatchRun drives Run with a hand-made ticker: the first check
// happens at once, later ones on each tick, and only changes are reported.
func TestOwnerWatchRun(t *testing.T) {
	const api = ExternalMetricsAPIService
	c := newFakeDynamic(apiServiceObj(api, service("keda", "keda-metrics-apiserver"), "True", "Passed"))
	w := NewOwnerWatch(c, api, "mlscale", "mlscale-adapter", prometheus.NewRegistry())
	ctx, cancel := context.WithCancel(context.Background())
	tick := make(chan time.Time)
	events := make(chan OwnerEvent, 10)
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx, tick, func(ev OwnerEvent) { events <- ev })
	}()
	next := func() OwnerEvent {
		t.Helper()
		select {
		case ev := <-events:
			return ev
		case <-time.After(10 * time.Second):
			t.Fatal("no event")
			return OwnerEvent{}
		}
	}
	if ev := next(); !ev.Warn || ev.Owner.Server() != "keda/keda-metrics-apiserver" {
		t.Fatalf("first event = %+v, want the KEDA warning", ev)
	}
	// The check after the first tick may or may not see the update; either
	// way the change is reported exactly once by the second tick.
	tick <- time.Time{}
	if _, err := c.Resource(APIServicesResource).Update(context.Background(),
		apiServiceObj(api, service("mlscale", "mlscale-adapter"), "True", "Passed"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	tick <- time.Time{}
	if ev := next(); ev.Warn || !ev.Owner.Ours {
		t.Fatalf("second event = %+v, want ours", ev)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	select {
	case ev := <-events:
		t.Errorf("unexpected event %+v", ev)
	default:
	}
}
