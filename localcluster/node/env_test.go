package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
)

// objects is a data-driven ObjectSource.
type objects struct {
	cms     map[string]*corev1.ConfigMap
	secrets map[string]*corev1.Secret
}

func (o objects) ConfigMap(_ context.Context, ns, name string) (*corev1.ConfigMap, error) {
	if cm, ok := o.cms[ns+"/"+name]; ok {
		return cm, nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "configmaps"}, name)
}

func (o objects) Secret(_ context.Context, ns, name string) (*corev1.Secret, error) {
	if s, ok := o.secrets[ns+"/"+name]; ok {
		return s, nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "secrets"}, name)
}

func testPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "iris-0", Namespace: "model", UID: "u-1", Labels: map[string]string{"app": "iris"}},
		Spec:       corev1.PodSpec{NodeName: "mlscale-local", ServiceAccountName: "default"},
		Status:     corev1.PodStatus{PodIP: "198.18.0.7", HostIP: "198.18.0.1"},
	}
}

func TestResolveEnv(t *testing.T) {
	src := objects{
		cms:     map[string]*corev1.ConfigMap{"model/cfg": {Data: map[string]string{"MODEL": "iris", "LEVEL": "debug"}}},
		secrets: map[string]*corev1.Secret{"model/creds": {Data: map[string][]byte{"token": []byte("s3cret")}}},
	}
	svc := map[string]string{"KUBERNETES_SERVICE_HOST": "198.18.0.1", "KUBERNETES_SERVICE_PORT": "16443"}
	field := func(p string) *corev1.EnvVarSource {
		return &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: p}}
	}
	tests := []struct {
		name    string
		c       corev1.Container
		want    map[string]string
		wantErr bool
	}{
		{
			name: "downward API and expansion in order",
			c: corev1.Container{Env: []corev1.EnvVar{
				{Name: "POD_IP", ValueFrom: field("status.podIP")},
				{Name: "LISTEN", Value: "$(POD_IP):9000"},
				{Name: "LATER", Value: "$(DEFINED_AFTER)"},
				{Name: "DEFINED_AFTER", Value: "x"},
				{Name: "NAME", ValueFrom: field("metadata.name")},
				{Name: "NS", ValueFrom: field("metadata.namespace")},
				{Name: "APP", ValueFrom: field("metadata.labels['app']")},
				{Name: "NODE", ValueFrom: field("spec.nodeName")},
				{Name: "HOST", ValueFrom: field("status.hostIP")},
				{Name: "API", Value: "$(KUBERNETES_SERVICE_HOST)"},
			}},
			want: map[string]string{
				"POD_IP": "198.18.0.7", "LISTEN": "198.18.0.7:9000", "LATER": "$(DEFINED_AFTER)", "DEFINED_AFTER": "x",
				"NAME": "iris-0", "NS": "model", "APP": "iris", "NODE": "mlscale-local", "HOST": "198.18.0.1",
				"API": "198.18.0.1", "KUBERNETES_SERVICE_HOST": "198.18.0.1", "KUBERNETES_SERVICE_PORT": "16443",
			},
		},
		{
			name: "envFrom with prefix, env overrides, refs",
			c: corev1.Container{
				EnvFrom: []corev1.EnvFromSource{{Prefix: "CFG_", ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}}}},
				Env: []corev1.EnvVar{
					{Name: "CFG_LEVEL", Value: "info"},
					{Name: "TOKEN", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}, Key: "token"}}},
					{Name: "M", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}, Key: "MODEL"}}},
					{Name: "OPT", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "missing"}, Key: "k", Optional: ptr.To(true)}}},
				},
			},
			want: map[string]string{"CFG_MODEL": "iris", "CFG_LEVEL": "info", "TOKEN": "s3cret", "M": "iris",
				"KUBERNETES_SERVICE_HOST": "198.18.0.1", "KUBERNETES_SERVICE_PORT": "16443"},
		},
		{
			name: "resource field refs round up by divisor",
			c: corev1.Container{
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m")},
					Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
				},
				Env: []corev1.EnvVar{
					{Name: "CPU", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "requests.cpu"}}},
					{Name: "CPU_M", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "requests.cpu", Divisor: resource.MustParse("1m")}}},
					{Name: "MEM_MI", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.memory", Divisor: resource.MustParse("1Mi")}}},
				},
			},
			want: map[string]string{"CPU": "1", "CPU_M": "500", "MEM_MI": "256",
				"KUBERNETES_SERVICE_HOST": "198.18.0.1", "KUBERNETES_SERVICE_PORT": "16443"},
		},
		{
			name: "missing required secret is an error",
			c: corev1.Container{Env: []corev1.EnvVar{
				{Name: "T", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "nope"}, Key: "k"}}},
			}},
			wantErr: true,
		},
		{
			name: "missing key is an error",
			c: corev1.Container{Env: []corev1.EnvVar{
				{Name: "T", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}, Key: "nokey"}}},
			}},
			wantErr: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, list, err := ResolveEnv(context.Background(), src, testPod(), &tc.c, svc)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("ResolveEnv succeeded, want an error; env %v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("env (-want +got):\n%s", diff)
			}
			if len(list) != len(got) {
				t.Errorf("list has %d entries, map %d", len(list), len(got))
			}
		})
	}
}

func TestImageMapResolve(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"modelserver", "adapter"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ms := filepath.Join(dir, "adapter")
	m := ImageMap{
		{Prefix: "ghcr.io/mlscale/", Dir: dir},
		{Prefix: "registry.k8s.io/metrics-server/metrics-server", Binary: ms},
	}
	tests := []struct {
		name     string
		image    string
		cmd      []string
		args     []string
		wantBin  string
		wantArgs []string
		wantErr  bool
	}{
		{"command names the program", "ghcr.io/mlscale/mlscale:dev", []string{"/modelserver"}, []string{"--listen=1.2.3.4:9000"}, filepath.Join(dir, "modelserver"), []string{"--listen=1.2.3.4:9000"}, false},
		{"command args come first", "ghcr.io/mlscale/mlscale:dev", []string{"/adapter", "--v=1"}, []string{"--x"}, filepath.Join(dir, "adapter"), []string{"--v=1", "--x"}, false},
		{"entrypoint from image name", "ghcr.io/mlscale/modelserver:v1", nil, []string{"a"}, filepath.Join(dir, "modelserver"), []string{"a"}, false},
		{"binary rule", "registry.k8s.io/metrics-server/metrics-server:v0.8.0", nil, []string{"--kubelet-insecure-tls"}, ms, []string{"--kubelet-insecure-tls"}, false},
		{"host tool", "ghcr.io/mlscale/mlscale:dev", []string{"sh", "-c", "true"}, nil, "", nil, true},
		{"unmapped image", "docker.io/library/nginx:1", nil, nil, "", nil, true},
		{"program not built", "ghcr.io/mlscale/mlscale:dev", []string{"/scaler"}, nil, "", nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &corev1.Container{Image: tc.image}
			bin, args, err := m.Resolve(c, tc.cmd, tc.args)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("Resolve = %s %v, want an error", bin, args)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(fmt.Sprint(tc.wantBin, tc.wantArgs), fmt.Sprint(bin, args)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestPodIPs(t *testing.T) {
	ips, nodeIP, err := PodIPs("198.18.0.0/24")
	if err != nil {
		t.Fatal(err)
	}
	if nodeIP != "198.18.0.1" || len(ips) != 253 || ips[0] != "198.18.0.2" || ips[252] != "198.18.0.254" {
		t.Errorf("PodIPs = node %s, %d pods from %s to %s", nodeIP, len(ips), ips[0], ips[len(ips)-1])
	}
	if _, _, err := PodIPs("198.18.0.0/31"); err == nil {
		t.Error("a /31 was accepted")
	}
}

func TestIPPoolDoesNotReuseAtOnce(t *testing.T) {
	p := newIPPool([]string{"a", "b", "c"})
	var got []string
	for _, uid := range []string{"1", "2"} {
		ip, err := p.allocate(types.UID(uid))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ip)
	}
	p.release("1")
	ip, _ := p.allocate("3")
	got = append(got, ip)
	ip, _ = p.allocate("4")
	got = append(got, ip)
	if _, err := p.allocate("5"); err == nil {
		t.Error("allocated from a full pool")
	}
	if diff := cmp.Diff([]string{"a", "b", "c", "a"}, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
