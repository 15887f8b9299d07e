package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// volumeWriter materialises a pod's volumes as directories under the pod's
// directory; the container helper bind-mounts them at the mountPaths.
type volumeWriter struct {
	client  kubernetes.Interface
	objects ObjectSource
}

// Prepare writes every volume of pod and returns volume name -> directory.
func (w volumeWriter) Prepare(ctx context.Context, pod *corev1.Pod, dir string) (map[string]string, error) {
	out := map[string]string{}
	for _, v := range pod.Spec.Volumes {
		vdir := filepath.Join(dir, "volumes", v.Name)
		var files map[string]fileContent
		var err error
		switch {
		case v.HostPath != nil:
			out[v.Name] = v.HostPath.Path
			continue
		case v.EmptyDir != nil:
			if err := os.MkdirAll(vdir, 0o777); err != nil {
				return nil, fmt.Errorf("volume %s: %w", v.Name, err)
			}
			out[v.Name] = vdir
			continue
		case v.Secret != nil:
			files, err = w.secretFiles(ctx, pod.Namespace, v.Secret.SecretName, v.Secret.Items, v.Secret.Optional, v.Secret.DefaultMode)
		case v.ConfigMap != nil:
			files, err = w.configMapFiles(ctx, pod.Namespace, v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.Optional, v.ConfigMap.DefaultMode)
		case v.DownwardAPI != nil:
			files, err = downwardFiles(pod, v.DownwardAPI.Items, v.DownwardAPI.DefaultMode)
		case v.Projected != nil:
			files, err = w.projectedFiles(ctx, pod, v.Projected)
		default:
			return nil, fmt.Errorf("volume %s: this node supports hostPath, emptyDir, secret, configMap, downwardAPI and projected volumes", v.Name)
		}
		if err != nil {
			return nil, fmt.Errorf("volume %s: %w", v.Name, err)
		}
		if err := writeFiles(vdir, files); err != nil {
			return nil, fmt.Errorf("volume %s: %w", v.Name, err)
		}
		out[v.Name] = vdir
	}
	return out, nil
}

type fileContent struct {
	data []byte
	mode os.FileMode
}

func mode(m *int32, def os.FileMode) os.FileMode {
	if m == nil {
		return def
	}
	return os.FileMode(*m)
}

func keyFiles(data map[string][]byte, items []corev1.KeyToPath, defMode *int32, what string) (map[string]fileContent, error) {
	files := map[string]fileContent{}
	if len(items) == 0 {
		for k, v := range data {
			files[k] = fileContent{v, mode(defMode, 0o644)}
		}
		return files, nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			return nil, fmt.Errorf("%s has no key %q", what, it.Key)
		}
		m := mode(defMode, 0o644)
		if it.Mode != nil {
			m = os.FileMode(*it.Mode)
		}
		files[it.Path] = fileContent{v, m}
	}
	return files, nil
}

func (w volumeWriter) secretFiles(ctx context.Context, ns, name string, items []corev1.KeyToPath, opt *bool, defMode *int32) (map[string]fileContent, error) {
	s, err := w.objects.Secret(ctx, ns, name)
	if err != nil {
		if optional(opt) {
			return map[string]fileContent{}, nil
		}
		return nil, fmt.Errorf("secret %q: %w", name, err)
	}
	return keyFiles(s.Data, items, defMode, "secret "+name)
}

func (w volumeWriter) configMapFiles(ctx context.Context, ns, name string, items []corev1.KeyToPath, opt *bool, defMode *int32) (map[string]fileContent, error) {
	cm, err := w.objects.ConfigMap(ctx, ns, name)
	if err != nil {
		if optional(opt) {
			return map[string]fileContent{}, nil
		}
		return nil, fmt.Errorf("configMap %q: %w", name, err)
	}
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return keyFiles(data, items, defMode, "configMap "+name)
}

func downwardFiles(pod *corev1.Pod, items []corev1.DownwardAPIVolumeFile, defMode *int32) (map[string]fileContent, error) {
	files := map[string]fileContent{}
	for _, it := range items {
		if it.FieldRef == nil {
			return nil, fmt.Errorf("downwardAPI %s: only fieldRef is supported", it.Path)
		}
		v, err := FieldPath(pod, it.FieldRef.FieldPath)
		if err != nil {
			return nil, err
		}
		m := mode(defMode, 0o644)
		if it.Mode != nil {
			m = os.FileMode(*it.Mode)
		}
		files[it.Path] = fileContent{[]byte(v), m}
	}
	return files, nil
}

// projectedFiles covers what the ServiceAccount admission plugin injects
// (kube-api-access-*): a bound token from the TokenRequest API, the cluster
// CA from kube-root-ca.crt and the namespace.
func (w volumeWriter) projectedFiles(ctx context.Context, pod *corev1.Pod, p *corev1.ProjectedVolumeSource) (map[string]fileContent, error) {
	files := map[string]fileContent{}
	add := func(f map[string]fileContent) {
		for k, v := range f {
			files[k] = v
		}
	}
	for _, s := range p.Sources {
		switch {
		case s.ServiceAccountToken != nil:
			t := s.ServiceAccountToken
			req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
				ExpirationSeconds: t.ExpirationSeconds,
				BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
			}}
			if t.Audience != "" {
				req.Spec.Audiences = []string{t.Audience}
			}
			sa := pod.Spec.ServiceAccountName
			if sa == "" {
				sa = "default"
			}
			tok, err := w.client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
			if err != nil {
				return nil, fmt.Errorf("requesting a token for service account %s/%s: %w", pod.Namespace, sa, err)
			}
			files[t.Path] = fileContent{[]byte(tok.Status.Token), mode(p.DefaultMode, 0o644)}
		case s.ConfigMap != nil:
			f, err := w.configMapFiles(ctx, pod.Namespace, s.ConfigMap.Name, s.ConfigMap.Items, s.ConfigMap.Optional, p.DefaultMode)
			if err != nil {
				return nil, err
			}
			add(f)
		case s.Secret != nil:
			f, err := w.secretFiles(ctx, pod.Namespace, s.Secret.Name, s.Secret.Items, s.Secret.Optional, p.DefaultMode)
			if err != nil {
				return nil, err
			}
			add(f)
		case s.DownwardAPI != nil:
			f, err := downwardFiles(pod, s.DownwardAPI.Items, p.DefaultMode)
			if err != nil {
				return nil, err
			}
			add(f)
		default:
			return nil, fmt.Errorf("unsupported projected source")
		}
	}
	return files, nil
}

func writeFiles(dir string, files map[string]fileContent) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, f := range files {
		p := filepath.Join(dir, filepath.Clean("/"+name))
		if !strings.HasPrefix(p, dir+string(filepath.Separator)) {
			return fmt.Errorf("file %q escapes the volume", name)
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

// containerMounts returns the bind mounts for c's volumeMounts.
func containerMounts(c *corev1.Container, volumes map[string]string) ([]Mount, error) {
	var ms []Mount
	for _, vm := range c.VolumeMounts {
		src, ok := volumes[vm.Name]
		if !ok {
			return nil, fmt.Errorf("volumeMount %s: no volume %q", vm.MountPath, vm.Name)
		}
		if vm.SubPath != "" {
			src = filepath.Join(src, filepath.Clean("/"+vm.SubPath))
		}
		ms = append(ms, Mount{Source: src, Target: vm.MountPath, ReadOnly: vm.ReadOnly})
	}
	return ms, nil
}
