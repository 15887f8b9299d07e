package activator

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
)

// wakeInterval is how often a Service with held requests and no ready
// endpoint has its scale target checked again (someone may have scaled it
// back to zero meanwhile).
const wakeInterval = 2 * time.Second

// Scaler scales a workload from zero to one through its scale
// subresource. Both Deployment and SeldonDeployment serve one, so one
// implementation covers both (the RBAC is `get` and `update` on
// deployments/scale or seldondeployments/scale, nothing else).
type Scaler interface {
	// ScaleFromZero sets the target's replicas to 1 if they are 0 and
	// reports whether it changed them.
	ScaleFromZero(ctx context.Context, namespace string, t *ScaleTarget) (bool, error)
}

// DynamicScaler is a Scaler over the dynamic client.
type DynamicScaler struct{ Client dynamic.Interface }

// ScaleFromZero implements Scaler. It reads the scale and writes it back
// with its resourceVersion, so a concurrent change (another activator
// replica, the HPA) makes the write fail with a conflict rather than undo it.
func (d DynamicScaler) ScaleFromZero(ctx context.Context, namespace string, t *ScaleTarget) (bool, error) {
	ri := d.Client.Resource(t.Resource).Namespace(namespace)
	for attempt := 0; ; attempt++ {
		sc, err := ri.Get(ctx, t.Name, metav1.GetOptions{}, "scale")
		if err != nil {
			return false, fmt.Errorf("reading the scale of %s %s/%s: %w", t.Kind, namespace, t.Name, err)
		}
		replicas, found, err := unstructured.NestedInt64(sc.Object, "spec", "replicas")
		if err != nil {
			return false, fmt.Errorf("reading spec.replicas of the scale of %s %s/%s: %w", t.Kind, namespace, t.Name, err)
		}
		if found && replicas > 0 {
			return false, nil
		}
		if err := unstructured.SetNestedField(sc.Object, int64(1), "spec", "replicas"); err != nil {
			return false, err
		}
		_, err = ri.Update(ctx, sc, metav1.UpdateOptions{}, "scale")
		if err == nil {
			return true, nil
		}
		if attempt < 2 && apierrors.IsConflict(err) {
			continue
		}
		return false, fmt.Errorf("scaling %s %s/%s from 0 to 1: %w", t.Kind, namespace, t.Name, err)
	}
}

// wake scales st's target from zero and keeps checking every wakeInterval
// while requests are held and no endpoint is ready. One wake loop runs per
// Service (st.waking).
func (a *Activator) wake(st *service, t *ScaleTarget) {
	defer func() {
		st.mu.Lock()
		st.waking = false
		st.mu.Unlock()
	}()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		changed, err := a.scaler.ScaleFromZero(ctx, st.ns, t)
		cancel()
		switch {
		case err != nil:
			a.m.wakes.WithLabelValues(st.ns, st.name, "error").Inc()
			a.log.Error("waking a workload at zero failed", "service", st.key, "target", t.Kind+"/"+t.Name, "err", err)
		case changed:
			a.m.wakes.WithLabelValues(st.ns, st.name, "scaled").Inc()
			a.log.Info("scaled from zero for a held request", "service", st.key, "target", t.Kind+"/"+t.Name)
		default:
			a.m.wakes.WithLabelValues(st.ns, st.name, "already_up").Inc()
		}
		select {
		case <-a.done:
			return
		case <-time.After(wakeInterval):
		}
		st.mu.Lock()
		again := st.held > 0 && len(st.endpoints(false))+len(st.endpoints(true)) == 0
		st.mu.Unlock()
		if !again {
			return
		}
	}
}
