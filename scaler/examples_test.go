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

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"k8s.io/apimachinery/pkg/util/validation/field"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"sigs.k8s.io/yaml"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/mlscale/mlscale/collector"
	"github.com/mlscale/mlscale/scaler/trigger"
)

// kedaCRDs is KEDA's CRDs as the project pins them (shared/ sits beside the
// repository, in development and in CI).
const kedaCRDs = "../../shared/crds/keda"

// crdSchema validates objects of one CRD version the way the API server does
// on create: OpenAPI schema, unknown fields (which the server would silently
// prune, so a typo'd field is an error here), and x-kubernetes-validations.
type crdSchema struct {
	kind       string
	apiVersion string
	validator  validation.SchemaValidator
	structural *structuralschema.Structural
	cel        *cel.Validator
}

func loadCRD(t *testing.T, file string) *crdSchema {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(kedaCRDs, file))
	if err != nil {
		t.Fatalf("reading KEDA's CRD (expected in shared/ beside the repository): %v", err)
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.UnmarshalStrict(data, &crd); err != nil {
		t.Fatalf("decoding %s: %v", file, err)
	}
	for _, v := range crd.Spec.Versions {
		if !v.Served || v.Schema == nil {
			continue
		}
		var internal apiextensions.JSONSchemaProps
		if err := apiextensionsv1.Convert_v1_JSONSchemaProps_To_apiextensions_JSONSchemaProps(v.Schema.OpenAPIV3Schema, &internal, nil); err != nil {
			t.Fatalf("converting the schema of %s: %v", file, err)
		}
		ss, err := structuralschema.NewStructural(&internal)
		if err != nil {
			t.Fatalf("%s is not a structural schema: %v", file, err)
		}
		validator, _, err := validation.NewSchemaValidator(&internal)
		if err != nil {
			t.Fatalf("building the validator of %s: %v", file, err)
		}
		return &crdSchema{
			kind:       crd.Spec.Names.Kind,
			apiVersion: crd.Spec.Group + "/" + v.Name,
			validator:  validator,
			structural: ss,
			cel:        cel.NewValidator(ss, true, celconfig.PerCallLimit),
		}
	}
	t.Fatalf("%s has no served version with a schema", file)
	return nil
}

func (c *crdSchema) validate(obj map[string]any) error {
	var errs field.ErrorList
	if obj["apiVersion"] != c.apiVersion {
		errs = append(errs, field.Invalid(field.NewPath("apiVersion"), obj["apiVersion"], "want "+c.apiVersion))
	}
	md, _ := obj["metadata"].(map[string]any)
	if md["name"] == nil || md["namespace"] == nil {
		errs = append(errs, field.Required(field.NewPath("metadata"), "name and namespace"))
	}
	errs = append(errs, validation.ValidateCustomResource(nil, obj, c.validator)...)
	pruned := pruning.PruneWithOptions(deepCopy(obj), c.structural, true, structuralschema.UnknownFieldPathOptions{TrackUnknownFieldPaths: true})
	for _, p := range pruned {
		errs = append(errs, field.Forbidden(field.NewPath(p), "unknown field (the API server would drop it)"))
	}
	celErrs, _ := c.cel.Validate(context.Background(), nil, c.structural, obj, nil, celconfig.RuntimeCELCostBudget)
	errs = append(errs, celErrs...)
	return errs.ToAggregate()
}

func deepCopy(obj map[string]any) map[string]any {
	b, err := yaml.Marshal(obj)
	if err != nil {
		panic(err)
	}
	out, err := decode(b)
	if err != nil {
		panic(err)
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
func checkExample(obj map[string]any, crds map[string]*crdSchema) error {
	kind, _ := obj["kind"].(string)
	crd := crds[kind]
	if crd == nil {
		return fmt.Errorf("no CRD for kind %q", kind)
	}
	if err := crd.validate(obj); err != nil {
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
	crds := map[string]*crdSchema{}
	for _, f := range []string{"keda.sh_scaledobjects.yaml", "keda.sh_triggerauthentications.yaml"} {
		c := loadCRD(t, f)
		crds[c.kind] = c
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
			o := deepCopy(base)
			tc.mutate(o)
			err := checkExample(o, crds)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
