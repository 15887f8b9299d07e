package scaler

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	utiljson "k8s.io/apimachinery/pkg/util/json"
	"k8s.io/apimachinery/pkg/util/validation/field"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/mlscale/mlscale/collector"
	"github.com/mlscale/mlscale/internal/crdschema"
	"github.com/mlscale/mlscale/manifests/crds"
	"github.com/mlscale/mlscale/scaler/trigger"
)

// kedaCRDs writes the CRDs as the project pins them (manifests/crds: KEDA's
// from its Go module) into a directory of t and returns KEDA's.
func kedaCRDs(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := crds.Write(ctx, dir); err != nil {
		t.Fatalf("fetching KEDA's CRDs: %v", err)
	}
	return filepath.Join(dir, "keda")
}

// loadCRD reads the first served version of a KEDA CRD file.
func loadCRD(t *testing.T, dir, file string) *crdschema.Validator {
	t.Helper()
	vs, err := crdschema.Load(filepath.Join(dir, file))
	if err != nil {
		t.Fatalf("loading %s: %v", file, err)
	}
	return vs[0]
}

// validateExample checks obj against its CRD as the API server would on
// create (crdschema), and that the example names its object and namespace.
func validateExample(c *crdschema.Validator, obj map[string]any) error {
	var errs field.ErrorList
	md, _ := obj["metadata"].(map[string]any)
	if md["name"] == nil || md["namespace"] == nil {
		errs = append(errs, field.Required(field.NewPath("metadata"), "name and namespace"))
	}
	return append(errs, c.FieldErrors(obj)...).ToAggregate()
}

func deepCopy(t *testing.T, obj map[string]any) map[string]any {
	t.Helper()
	out, err := crdschema.Normalize(obj)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// decode reads one YAML document as the API server reads a request body:
// integers as int64, not float64, which the CEL rules insist on.
func decode(doc []byte) (map[string]any, error) {
	j, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return nil, err
	}
	var obj map[string]any
	if err := utiljson.Unmarshal(j, &obj); err != nil {
		return nil, err
	}
	return obj, nil
}

// readObjects decodes every document of a multi-document YAML file.
func readObjects(t *testing.T, path string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var out []map[string]any
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		obj, err := decode(doc)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if obj != nil {
			out = append(out, obj)
		}
	}
}

// checkExample validates obj against its CRD and, for a ScaledObject, every
// mlscale trigger's metadata with the scaler's own parser, as KEDA would
// forward it.
func checkExample(obj map[string]any, crds map[string]*crdschema.Validator) error {
	kind, _ := obj["kind"].(string)
	crd := crds[kind]
	if crd == nil {
		return fmt.Errorf("no CRD for kind %q", kind)
	}
	if err := validateExample(crd, obj); err != nil {
		return err
	}
	if kind != "ScaledObject" {
		return nil
	}
	ns := obj["metadata"].(map[string]any)["namespace"].(string)
	name := obj["metadata"].(map[string]any)["name"].(string)
	for i, tr := range obj["spec"].(map[string]any)["triggers"].([]any) {
		tm := tr.(map[string]any)
		if typ := tm["type"]; typ != "external" && typ != "external-push" {
			continue
		}
		metadata := map[string]string{}
		for k, v := range tm["metadata"].(map[string]any) {
			metadata[k] = fmt.Sprint(v)
		}
		if _, err := trigger.Parse(&pb.ScaledObjectRef{Name: name, Namespace: ns, ScalerMetadata: metadata}, defaultMetricNames()); err != nil {
			return fmt.Errorf("spec.triggers[%d]: %w", i, err)
		}
	}
	return nil
}

func defaultMetricNames() []string {
	var names []string
	for _, r := range collector.DefaultRules() {
		names = append(names, r.Name)
	}
	return names
}

func TestScaledObjectExamples(t *testing.T) {
	crds := map[string]*crdschema.Validator{}
	dir := kedaCRDs(t)
	for _, f := range []string{"keda.sh_scaledobjects.yaml", "keda.sh_triggerauthentications.yaml"} {
		c := loadCRD(t, dir, f)
		crds[c.GVK.Kind] = c
	}
	files, err := filepath.Glob("testdata/scaledobject-*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	triggerTypes := map[any]bool{}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			for _, obj := range readObjects(t, f) {
				if err := checkExample(obj, crds); err != nil {
					t.Errorf("%s %v: %v", obj["kind"], obj["metadata"].(map[string]any)["name"], err)
				}
				if obj["kind"] == "ScaledObject" {
					for _, tr := range obj["spec"].(map[string]any)["triggers"].([]any) {
						triggerTypes[tr.(map[string]any)["type"]] = true
					}
				}
			}
		})
	}
	for _, want := range []string{"external", "external-push"} {
		if !triggerTypes[want] {
			t.Errorf("no example has an %s trigger", want)
		}
	}

	// The checks can fail: each broken variant of the first example must be
	// rejected, by the CRD or by the scaler.
	base := readObjects(t, "testdata/scaledobject-external.yaml")[0]
	first := func(o map[string]any) map[string]any {
		return o["spec"].(map[string]any)["triggers"].([]any)[0].(map[string]any)
	}
	broken := []struct {
		name   string
		mutate func(o map[string]any)
		want   string
	}{
		{"no triggers", func(o map[string]any) { o["spec"].(map[string]any)["triggers"] = []any{} }, "spec.triggers"},
		{"min above max (CEL rule)", func(o map[string]any) { o["spec"].(map[string]any)["minReplicaCount"] = int64(30) }, "spec: Invalid value: minReplicaCount must be less than or equal to maxReplicaCount"},
		{"misspelt field", func(o map[string]any) { o["spec"].(map[string]any)["minReplicas"] = int64(1) }, "spec.minReplicas"},
		{"empty trigger type", func(o map[string]any) { first(o)["type"] = "" }, "spec.triggers[0].type"},
		{"number where metadata wants strings", func(o map[string]any) { first(o)["metadata"].(map[string]any)["targetValue"] = int64(4) }, "spec.triggers[0].metadata.targetValue"},
		{"no scale target", func(o map[string]any) { delete(o["spec"].(map[string]any), "scaleTargetRef") }, "spec.scaleTargetRef"},
		{"wrong apiVersion", func(o map[string]any) { o["apiVersion"] = "keda.sh/v1" }, "apiVersion"},
		{"scaler: no targetValue", func(o map[string]any) { delete(first(o)["metadata"].(map[string]any), "targetValue") }, "targetValue is required"},
		{"scaler: two workloads", func(o map[string]any) { first(o)["metadata"].(map[string]any)["labelSelector"] = "app=iris" }, "mutually exclusive"},
		{"scaler: unknown metric", func(o map[string]any) { first(o)["metadata"].(map[string]any)["metricName"] = "rps" }, `"rps" is not served`},
	}
	for _, tc := range broken {
		t.Run("broken/"+tc.name, func(t *testing.T) {
			o := deepCopy(t, base)
			tc.mutate(o)
			err := checkExample(o, crds)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
