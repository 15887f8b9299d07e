package collector

import (
	"context"
	"fmt"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	appslisters "k8s.io/client-go/listers/apps/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
)

// NormalizeKind maps the spellings a user or an API path may use for a
// workload kind (kind, plural resource, kubectl short name, any case, with or
// without an API group suffix) to one of the Kind* constants.
func NormalizeKind(kind string) (string, error) {
	k := strings.ToLower(strings.TrimSpace(kind))
	// "deployments.apps", "seldondeployments.machinelearning.seldon.io".
	if i := strings.IndexByte(k, '.'); i >= 0 {
		k = k[:i]
	}
	switch k {
	case "deployment", "deployments", "deploy":
		return KindDeployment, nil
	case "seldondeployment", "seldondeployments", "sdep", "sdeps":
		return KindSeldonDeployment, nil
	case "service", "services", "svc":
		return KindService, nil
	}
	return "", fmt.Errorf("%w %q (want Deployment, SeldonDeployment or Service)", ErrUnsupportedKind, kind)
}

// ListerResolver resolves workloads from informer caches, so resolving on
// every API request costs no round trip to the API server.
type ListerResolver struct {
	deployments appslisters.DeploymentLister
	services    corelisters.ServiceLister
}

var _ SelectorResolver = (*ListerResolver)(nil)

// NewListerResolver registers Deployment and Service informers on factory.
// The caller starts the factory (and waits for its caches to sync).
func NewListerResolver(factory informers.SharedInformerFactory) *ListerResolver {
	return &ListerResolver{
		deployments: factory.Apps().V1().Deployments().Lister(),
		services:    factory.Core().V1().Services().Lister(),
	}
}

// SelectorFor implements SelectorResolver. A SeldonDeployment needs no lookup:
// Seldon Core labels all its pods with SeldonDeploymentLabel=<name>, which
// also keeps this working where the SeldonDeployment CRD is not installed.
func (r *ListerResolver) SelectorFor(_ context.Context, kind, namespace, name string) (labels.Selector, error) {
	k, err := NormalizeKind(kind)
	if err != nil {
		return nil, err
	}
	if name == "" {
		return nil, fmt.Errorf("resolving %s in namespace %q: empty name", k, namespace)
	}
	switch k {
	case KindSeldonDeployment:
		return labels.SelectorFromSet(labels.Set{SeldonDeploymentLabel: name}), nil
	case KindDeployment:
		d, err := r.deployments.Deployments(namespace).Get(name)
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("resolving deployment %s/%s: %w", namespace, name, ErrWorkloadNotFound)
		}
		if err != nil {
			return nil, fmt.Errorf("resolving deployment %s/%s: %w", namespace, name, err)
		}
		sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
		if err != nil {
			return nil, fmt.Errorf("resolving deployment %s/%s: bad selector: %w", namespace, name, err)
		}
		if sel.Empty() {
			return nil, fmt.Errorf("resolving deployment %s/%s: empty selector: %w", namespace, name, ErrWorkloadNotFound)
		}
		return sel, nil
	default: // KindService
		s, err := r.services.Services(namespace).Get(name)
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("resolving service %s/%s: %w", namespace, name, ErrWorkloadNotFound)
		}
		if err != nil {
			return nil, fmt.Errorf("resolving service %s/%s: %w", namespace, name, err)
		}
		// A Service without a selector has hand-made endpoints, not pods we
		// could match; treat it as selecting nothing rather than everything.
		if len(s.Spec.Selector) == 0 {
			return nil, fmt.Errorf("resolving service %s/%s: service has no pod selector: %w", namespace, name, ErrWorkloadNotFound)
		}
		return labels.SelectorFromSet(s.Spec.Selector), nil
	}
}
