package scaler

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"k8s.io/client-go/kubernetes"

	"github.com/mlscale/mlscale/activator/api"
)

// PendingSource reports requests waiting for, or being served by, a Service
// in front of a workload: what the collector cannot see when the workload has
// no pods to scrape. With one, a trigger's wake Service (trigger.Trigger's
// WakeService) makes it active while requests are pending.
type PendingSource interface {
	// Pending returns the requests held (waiting for a ready endpoint) and
	// in flight for Service namespace/service; ok is false while the count
	// is unknown (no fresh answer from the source).
	Pending(namespace, service string) (held, inflight int, ok bool)
}

// updater is implemented by pending sources that can say when they have a new
// answer, so open streams re-evaluate at once rather than at their next poll.
type updater interface {
	// Updated returns a channel closed at the next new answer.
	Updated() <-chan struct{}
}

// The activator's demand watcher is the pending source: one stream per
// activator replica (activator/api), summed per Service.
var (
	_ PendingSource = (*api.Watcher)(nil)
	_ updater       = (*api.Watcher)(nil)
)

// WatchActivator follows the demand of every replica of the activator's
// Service ("namespace/name") until ctx ends.
func WatchActivator(ctx context.Context, client kubernetes.Interface, service string, log *slog.Logger) (*api.Watcher, error) {
	ns, name, err := splitService(service)
	if err != nil {
		return nil, err
	}
	w := api.NewWatcher(log)
	if err := w.Discover(ctx, client, ns, name); err != nil {
		return nil, err
	}
	return w, nil
}

func splitService(s string) (string, string, error) {
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return "", "", fmt.Errorf("activator-service: %q must be namespace/name", s)
	}
	return ns, name, nil
}
