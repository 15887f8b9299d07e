// Package manifests renders mlscale's kustomize overlays with the kustomize Go
// API, so tests and the local cluster apply exactly what `kubectl apply -k`
// would, without a kustomize binary.
package manifests

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// Overlays returns the names of the overlays under root/overlays.
func Overlays(root string) ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(root, "overlays"))
	if err != nil {
		return nil, fmt.Errorf("listing overlays: %w", err)
	}
	var names []string
	for _, e := range ents {
		if _, err := os.Stat(filepath.Join(root, "overlays", e.Name(), "kustomization.yaml")); err == nil {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	return names, nil
}

// Build renders the kustomization in dir on fsys, in kustomize's legacy
// order (Namespaces and RBAC before the workloads that use them), as
// `kubectl kustomize` prints it.
func Build(fsys filesys.FileSystem, dir string) ([]*unstructured.Unstructured, error) {
	opts := krusty.MakeDefaultOptions()
	opts.Reorder = krusty.ReorderOptionLegacy
	rm, err := krusty.MakeKustomizer(opts).Run(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("rendering %s: %w", dir, err)
	}
	var objs []*unstructured.Unstructured
	for _, r := range rm.Resources() {
		b, err := r.MarshalJSON()
		if err != nil {
			return nil, fmt.Errorf("rendering %s: encoding %s: %w", dir, r.CurId(), err)
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(b); err != nil {
			return nil, fmt.Errorf("rendering %s: decoding %s: %w", dir, r.CurId(), err)
		}
		objs = append(objs, u)
	}
	return objs, nil
}

// YAML joins objs into one multi-document YAML stream.
func YAML(objs []*unstructured.Unstructured) ([]byte, error) {
	var out []byte
	for i, o := range objs {
		b, err := yaml.Marshal(o.Object)
		if err != nil {
			return nil, fmt.Errorf("encoding %s/%s: %w", o.GetKind(), o.GetName(), err)
		}
		if i > 0 {
			out = append(out, "---\n"...)
		}
		out = append(out, b...)
	}
	return out, nil
}
