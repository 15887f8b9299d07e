package collector

import (
	"context"
	"errors"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
)

func TestListerResolver(t *testing.T) {
	client := fake.NewClientset(
		&appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Namespace: "models", Name: "iris"},
			Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{
				MatchLabels:      map[string]string{"app": "iris"},
				MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: metav1.LabelSelectorOpIn, Values: []string{"model"}}},
			}},
		},
		&corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "models", Name: "iris"},
			Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": "iris"}},
		},
		&corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "models", Name: "external"},
		},
	)
	factory := informers.NewSharedInformerFactory(client, 0)
	r := NewListerResolver(factory)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())

	tests := []struct {
		name, kind, ns, obj string
		want                string
		wantErr             error
	}{
		{"deployment", "Deployment", "models", "iris", "app=iris,tier in (model)", nil},
		{"deployment resource", "deployments.apps", "models", "iris", "app=iris,tier in (model)", nil},
		{"seldon", "SeldonDeployment", "models", "iris", "seldon-deployment-id=iris", nil},
		{"seldon short", "sdep", "models", "iris", "seldon-deployment-id=iris", nil},
		{"service", "svc", "models", "iris", "app=iris", nil},
		{"missing deployment", "Deployment", "models", "nope", "", ErrWorkloadNotFound},
		{"wrong namespace", "Deployment", "other", "iris", "", ErrWorkloadNotFound},
		{"service without selector", "Service", "models", "external", "", ErrWorkloadNotFound},
		{"bad kind", "StatefulSet", "models", "iris", "", ErrUnsupportedKind},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sel, err := r.SelectorFor(ctx, tc.kind, tc.ns, tc.obj)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("SelectorFor error = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("SelectorFor: %v", err)
			}
			if got := sel.String(); got != tc.want {
				t.Errorf("selector = %q, want %q", got, tc.want)
			}
		})
	}
}
