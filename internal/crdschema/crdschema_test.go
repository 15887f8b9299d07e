package crdschema

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/runtime/schema"
)

// widgetCRD is a tiny CRD with one of each kind of check: a required field,
// an enum, a closed object (unknown fields are pruned by the server, so
// rejected here), and a CEL rule. v1beta1 is not served and must be skipped.
const widgetCRD = `apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  names: {kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}
  scope: Namespaced
  versions:
  - name: v1beta1
    served: false
    storage: false
    schema:
      openAPIV3Schema: {type: object}
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            x-kubernetes-validations:
            - rule: "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas"
              message: minReplicas must not exceed maxReplicas
            properties:
              size: {type: string, enum: [small, large]}
              minReplicas: {type: integer}
              maxReplicas: {type: integer}
              labels:
                type: object
                x-kubernetes-preserve-unknown-fields: true
`

// otherDoc is a non-CRD document that shares the file and must be skipped.
const otherDoc = `apiVersion: v1
kind: ConfigMap
metadata: {name: unrelated}
`

func write(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func widget(spec map[string]any) map[string]any {
	return map[string]any{
		"apiVersion": "example.com/v1",
		"kind":       "Widget",
		"metadata":   map[string]any{"name": "w", "namespace": "default"},
		"spec":       spec,
	}
}

func TestValidate(t *testing.T) {
	vs, err := Load(write(t, t.TempDir(), "widgets.yaml", otherDoc+"---\n"+widgetCRD))
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 1 {
		t.Fatalf("got %d validators, want 1 (v1beta1 is not served)", len(vs))
	}
	v := vs[0]
	if want := (schema.GroupVersionKind{Group: "example.com", Version: "v1", Kind: "Widget"}); v.GVK != want {
		t.Fatalf("GVK %v, want %v", v.GVK, want)
	}
	for _, tc := range []struct {
		name string
		obj  map[string]any
		want []string // substrings of the error; none means valid
	}{
		{"valid", widget(map[string]any{"size": "small", "minReplicas": 1, "maxReplicas": 3}), nil},
		{"valid with optional fields left out", widget(map[string]any{"size": "large"}), nil},
		{"valid: preserved free-form field", widget(map[string]any{"size": "large", "labels": map[string]any{"a": "b"}}), nil},
		{"valid: float64 integers as from encoding/json", widget(map[string]any{"size": "small", "minReplicas": float64(2), "maxReplicas": float64(2)}), nil},
		{"missing required field", widget(map[string]any{"minReplicas": 1}), []string{"spec.size: Required value"}},
		{"value outside the enum", widget(map[string]any{"size": "medium"}), []string{"spec.size: Unsupported value", `"medium"`}},
		{"unknown field", widget(map[string]any{"size": "small", "colour": "red"}), []string{"spec.colour: Forbidden: unknown field"}},
		{"unknown top-level field", func() map[string]any {
			o := widget(map[string]any{"size": "small"})
			o["sepc"] = map[string]any{}
			return o
		}(), []string{"sepc: Forbidden: unknown field"}},
		{"CEL rule broken", widget(map[string]any{"size": "small", "minReplicas": 5, "maxReplicas": 2}), []string{"spec: Invalid value", "minReplicas must not exceed maxReplicas"}},
		{"wrong type", widget(map[string]any{"size": "small", "maxReplicas": "ten"}), []string{"spec.maxReplicas", "must be of type integer"}},
		{"wrong apiVersion", func() map[string]any {
			o := widget(map[string]any{"size": "small"})
			o["apiVersion"] = "example.com/v2"
			return o
		}(), []string{"apiVersion: Invalid value", "want example.com/v1"}},
		{"wrong kind", func() map[string]any {
			o := widget(map[string]any{"size": "small"})
			o["kind"] = "Gadget"
			return o
		}(), []string{"kind: Invalid value", "want Widget"}},
		{"several faults reported together", widget(map[string]any{"size": "huge", "extra": true}), []string{"spec.size: Unsupported value", "spec.extra: Forbidden"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, err := Normalize(tc.obj)
			if err != nil {
				t.Fatal(err)
			}
			err = v.Validate(tc.obj)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("rejected a valid object: %v", err)
				}
			} else {
				if err == nil {
					t.Fatalf("accepted; want an error containing %q", tc.want)
				}
				for _, w := range tc.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
			}
			after, _ := Normalize(tc.obj)
			if !reflect.DeepEqual(before, after) {
				t.Errorf("Validate modified its argument: %v -> %v", before, after)
			}
		})
	}
}

func TestLoadDir(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "example/widgets.yaml", widgetCRD)
	write(t, dir, "other/configmap.yaml", otherDoc)
	write(t, dir, "README.md", "not yaml: [")
	set, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	gvk := schema.GroupVersionKind{Group: "example.com", Version: "v1", Kind: "Widget"}
	if len(set) != 1 || set[gvk] == nil {
		t.Fatalf("got %v, want only %v", set, gvk)
	}
	if err := set[gvk].Validate(widget(map[string]any{"size": "small"})); err != nil {
		t.Fatal(err)
	}
}

func TestLoadErrors(t *testing.T) {
	nonStructural := strings.Replace(widgetCRD, "                x-kubernetes-preserve-unknown-fields: true", "                patternProperties: {'^a': {type: string}}", 1)
	typo := strings.Replace(widgetCRD, "  scope: Namespaced", "  scope: Namespaced\n  scoop: x", 1)
	for _, tc := range []struct {
		name, content string
		want          string
	}{
		{"no CRD in the file", otherDoc, "has no served CRD version with a schema"},
		{"no served version", strings.ReplaceAll(widgetCRD, "served: true", "served: false"), "has no served CRD version with a schema"},
		{"not structural", nonStructural, "CRD widgets.example.com version v1: not a structural schema"},
		{"unknown CRD field", typo, `unknown field "scoop"`},
		{"bad YAML", "kind: CustomResourceDefinition\nspec: [", "widgets.yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(write(t, t.TempDir(), "widgets.yaml", tc.content))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		_, err := Load(filepath.Join(t.TempDir(), "absent.yaml"))
		if !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("got %v, want fs.ErrNotExist", err)
		}
	})
	t.Run("missing dir", func(t *testing.T) {
		_, err := LoadDir(filepath.Join(t.TempDir(), "absent"))
		if !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("got %v, want fs.ErrNotExist", err)
		}
	})
}
