package adapter

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
)

// ExternalMetricsAPIService is the APIService that routes
// external.metrics.k8s.io; only one Service can be behind it.
const ExternalMetricsAPIService = "v1beta1.external.metrics.k8s.io"

// APIServicesResource is apiregistration.k8s.io/v1 APIService, read through
// the dynamic client (the aggregator's typed client is not worth a module).
var APIServicesResource = schema.GroupVersionResource{Group: "apiregistration.k8s.io", Version: "v1", Resource: "apiservices"}

// Owner is who serves an APIService.
type Owner struct {
	// APIService is the object's name, e.g. v1beta1.external.metrics.k8s.io.
	APIService string
	// Found is false when no such APIService exists: nobody serves the group.
	Found bool
	// Local is true for a built-in group the kube-apiserver serves itself
	// (spec.service is null).
	Local bool
	// Namespace and Name are the Service behind it (empty when Local).
	Namespace, Name string
	// Ours is true when that Service is the one asked about.
	Ours bool
	// Available is the status of the Available condition ("True", "False",
	// "Unknown", or "" when the aggregator has not reported one yet), with
	// its reason and message.
	Available, AvailableReason, AvailableMessage string
}

// Server names who serves the APIService: "namespace/name", "local" or
// "absent".
func (o Owner) Server() string {
	switch {
	case !o.Found:
		return "absent"
	case o.Local:
		return "local"
	default:
		return o.Namespace + "/" + o.Name
	}
}

// CheckAPIServiceOwner reads the APIService apiService and reports which
// Service serves it and whether that is wantNamespace/wantName. A missing
// APIService is not an error (Found is false); any other failure to read it,
// such as RBAC forbidding the get, is, and keeps its API status so
// apierrors.IsForbidden works on it.
func CheckAPIServiceOwner(ctx context.Context, c dynamic.Interface, apiService, wantNamespace, wantName string) (Owner, error) {
	o := Owner{APIService: apiService}
	obj, err := c.Resource(APIServicesResource).Get(ctx, apiService, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return o, nil
	}
	if err != nil {
		return o, fmt.Errorf("reading APIService %s: %w", apiService, err)
	}
	o.Found = true
	// A built-in group has "service": null, or no service at all.
	raw, _, _ := unstructured.NestedFieldNoCopy(obj.Object, "spec", "service")
	switch svc := raw.(type) {
	case nil:
		o.Local = true
	case map[string]any:
		o.Namespace, _ = svc["namespace"].(string)
		o.Name, _ = svc["name"].(string)
		o.Ours = o.Namespace == wantNamespace && o.Name == wantName
	default:
		return o, fmt.Errorf("reading APIService %s: spec.service is a %T, not an object", apiService, raw)
	}
	o.Available, o.AvailableReason, o.AvailableMessage = availableCondition(obj)
	return o, nil
}

// availableCondition returns the status, reason and message of the
// APIService's Available condition, all empty when it has none.
func availableCondition(obj *unstructured.Unstructured) (status, reason, message string) {
	conds, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
	for _, c := range conds {
		m, ok := c.(map[string]any)
		if !ok || m["type"] != "Available" {
			continue
		}
		status, _ = m["status"].(string)
		reason, _ = m["reason"].(string)
		message, _ = m["message"].(string)
		return status, reason, message
	}
	return "", "", ""
}

// OwnerEvent is one change in who serves the watched APIService, ready to log.
type OwnerEvent struct {
	// Warn marks a clash: another Service owns the APIService.
	Warn bool
	// Msg is the whole message, meant for an operator.
	Msg   string
	Owner Owner
	// Err is the failure to read the APIService, if any.
	Err error
}

// OwnerWatch checks periodically who serves an APIService this adapter
// means to serve, and reports each change once: a clash (another Service,
// KEDA's metrics server typically, or the kube-apiserver itself) as a
// warning, everything else (ours, absent, unreadable) as information. It
// never stops the adapter.
type OwnerWatch struct {
	client          dynamic.Interface
	apiService      string
	namespace, name string
	owned           *prometheus.GaugeVec
	last            string
	checked         bool
	checkTimeout    time.Duration
}

// NewOwnerWatch watches apiService for the Service namespace/name and
// registers mlscale_adapter_apiservice_owned{apiservice} on reg: 1 when that
// Service serves it, 0 when another, the kube-apiserver or nobody does, and
// no series while it cannot be read.
func NewOwnerWatch(c dynamic.Interface, apiService, namespace, name string, reg prometheus.Registerer) *OwnerWatch {
	return &OwnerWatch{
		client:       c,
		apiService:   apiService,
		namespace:    namespace,
		name:         name,
		checkTimeout: 10 * time.Second,
		owned: promauto.With(reg).NewGaugeVec(prometheus.GaugeOpts{
			Name: "mlscale_adapter_apiservice_owned",
			Help: "1 when the APIService routes to this adapter's Service, 0 when another Service, the kube-apiserver or nobody serves it; absent while the APIService cannot be read.",
		}, []string{"apiservice"}),
	}
}

// Check reads the APIService once, updates the gauge, and returns what it
// found and whether that differs from the previous check (always true the
// first time). Only a changed event is worth logging.
func (w *OwnerWatch) Check(ctx context.Context) (OwnerEvent, bool) {
	ctx, cancel := context.WithTimeout(ctx, w.checkTimeout)
	defer cancel()
	o, err := CheckAPIServiceOwner(ctx, w.client, w.apiService, w.namespace, w.name)
	ev, key := w.describe(o, err)
	switch {
	case err != nil:
		w.owned.DeleteLabelValues(w.apiService)
	case o.Ours:
		w.owned.WithLabelValues(w.apiService).Set(1)
	default:
		w.owned.WithLabelValues(w.apiService).Set(0)
	}
	changed := !w.checked || key != w.last
	w.checked, w.last = true, key
	return ev, changed
}

// Run checks at once and then on every tick until ctx ends, calling report
// with each change.
func (w *OwnerWatch) Run(ctx context.Context, tick <-chan time.Time, report func(OwnerEvent)) {
	for {
		if ev, changed := w.Check(ctx); changed {
			report(ev)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick:
		}
	}
}

// describe builds the event for one check and the key that decides whether
// it changed: the owner and, for our own APIService, its availability. The
// condition's message (addresses, timeouts) is left out of the key so a
// flapping detail does not repeat the log.
func (w *OwnerWatch) describe(o Owner, err error) (OwnerEvent, string) {
	us := w.namespace + "/" + w.name
	ev := OwnerEvent{Owner: o, Err: err}
	group := apiServiceGroup(w.apiService)
	switch {
	case err != nil:
		ev.Msg = fmt.Sprintf("cannot tell who serves %s: %v; carrying on", group, err)
		if apierrors.IsForbidden(err) {
			ev.Msg += " (checking needs get on apiservices.apiregistration.k8s.io)"
		}
		return ev, "error:" + string(apierrors.ReasonForError(err))
	case !o.Found:
		ev.Msg = fmt.Sprintf("APIService %s does not exist: nobody routes %s to this adapter (%s); apply the adapter's APIServices, or run with --enable-external-metrics=false if another server should own the group", w.apiService, group, us)
		return ev, "absent"
	case o.Ours:
		ev.Msg = fmt.Sprintf("%s is served by this adapter (%s, APIService %s), Available=%s", group, us, w.apiService, orUnknown(o.Available))
		if o.Available != "True" && o.AvailableReason != "" {
			ev.Msg += fmt.Sprintf(" (%s: %s)", o.AvailableReason, o.AvailableMessage)
		}
		return ev, "ours:" + o.Available + ":" + o.AvailableReason
	case o.Local:
		ev.Warn = true
		ev.Msg = fmt.Sprintf("%s is served by the kube-apiserver itself (APIService %s has no service), not by this adapter (%s): only one server can own an API group", group, w.apiService, us)
		return ev, "local"
	default:
		ev.Warn = true
		ev.Msg = fmt.Sprintf("%s is served by %s (APIService %s), not by this adapter (%s): only one server can own an API group. "+
			"If KEDA is installed, run the adapter with --enable-external-metrics=false (manifests/components/keda does) and let KEDA's metrics server serve external metrics; mlscale's KEDA scaler feeds it.",
			group, o.Server(), w.apiService, us)
		return ev, "other:" + o.Server()
	}
}

// apiServiceGroup is the API group of an APIService named version.group.
func apiServiceGroup(apiService string) string {
	if _, group, ok := strings.Cut(apiService, "."); ok {
		return group
	}
	return apiService
}

func orUnknown(s string) string {
	if s == "" {
		return "Unknown"
	}
	return s
}
