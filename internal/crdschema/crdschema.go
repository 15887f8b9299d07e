// Package crdschema validates objects against real CustomResourceDefinitions
// in process, the way kube-apiserver does on create: the OpenAPI v3 schema,
// unknown fields (which the server would prune silently, so here they are an
// error) and x-kubernetes-validations (CEL rules).
//
// Only served versions that carry a schema are loaded, and schemas are used
// exactly as written (no fix-ups). Two things the API server does are not
// done here: defaults are not applied before validation, and a schema only
// has to convert to the structural form (structuralschema.NewStructural), not
// pass the server's full structural-schema checks, so untyped "items: {}"
// (as in Seldon's trimmed CRD) is accepted here while kube-apiserver refuses
// to install it.
package crdschema

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"k8s.io/apimachinery/pkg/util/validation/field"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"sigs.k8s.io/yaml"
)

// Validator validates objects of one served version of one CRD.
type Validator struct {
	// GVK is the group, version and kind the validator accepts.
	GVK schema.GroupVersionKind

	schema     validation.SchemaValidator
	structural *structuralschema.Structural
	cel        *cel.Validator
}

// Set maps group/version/kind to the validator of that CRD version.
type Set map[schema.GroupVersionKind]*Validator

// Load reads every CustomResourceDefinition in the (possibly multi-document)
// YAML file at path and returns a validator for each served version with a
// schema, in file order. Documents of other kinds are skipped; a file without
// any served schema is an error.
func Load(path string) ([]*Validator, error) {
	vs, err := loadFile(path)
	if err != nil {
		return nil, err
	}
	if len(vs) == 0 {
		return nil, fmt.Errorf("%s has no served CRD version with a schema", path)
	}
	return vs, nil
}

// LoadDir reads every *.yaml file under dir (recursively) as Load does and
// returns their validators by group/version/kind; a later file's version
// replaces an earlier one. Files without CRDs are skipped. A missing dir is an
// error wrapping fs.ErrNotExist.
func LoadDir(dir string) (Set, error) {
	out := Set{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".yaml") {
			return err
		}
		vs, err := loadFile(p)
		for _, v := range vs {
			out[v.GVK] = v
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func loadFile(path string) ([]*Validator, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []*Validator
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		vs, err := fromDocument(doc)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, vs...)
	}
}

// fromDocument builds the validators of one YAML document, none if it is not
// a CustomResourceDefinition.
func fromDocument(doc []byte) ([]*Validator, error) {
	var head struct{ Kind string }
	if err := yaml.Unmarshal(doc, &head); err != nil {
		return nil, fmt.Errorf("decoding a document: %w", err)
	}
	if head.Kind != "CustomResourceDefinition" {
		return nil, nil
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.UnmarshalStrict(doc, &crd); err != nil {
		return nil, fmt.Errorf("decoding CustomResourceDefinition: %w", err)
	}
	var out []*Validator
	for _, v := range crd.Spec.Versions {
		if !v.Served || v.Schema == nil || v.Schema.OpenAPIV3Schema == nil {
			continue
		}
		gvk := schema.GroupVersionKind{Group: crd.Spec.Group, Version: v.Name, Kind: crd.Spec.Names.Kind}
		val, err := newValidator(gvk, v.Schema.OpenAPIV3Schema)
		if err != nil {
			return nil, fmt.Errorf("CRD %s version %s: %w", crd.Name, v.Name, err)
		}
		out = append(out, val)
	}
	return out, nil
}

func newValidator(gvk schema.GroupVersionKind, s *apiextensionsv1.JSONSchemaProps) (*Validator, error) {
	var internal apiextensions.JSONSchemaProps
	if err := apiextensionsv1.Convert_v1_JSONSchemaProps_To_apiextensions_JSONSchemaProps(s, &internal, nil); err != nil {
		return nil, fmt.Errorf("converting the schema: %w", err)
	}
	ss, err := structuralschema.NewStructural(&internal)
	if err != nil {
		return nil, fmt.Errorf("not a structural schema: %w", err)
	}
	sv, _, err := validation.NewSchemaValidator(&internal)
	if err != nil {
		return nil, fmt.Errorf("building the schema validator: %w", err)
	}
	return &Validator{GVK: gvk, schema: sv, structural: ss, cel: cel.NewValidator(ss, true, celconfig.PerCallLimit)}, nil
}

// Validate checks obj (a decoded JSON/YAML object, not modified) as the API
// server would on create: apiVersion and kind are this validator's, the
// OpenAPI schema holds, no field is unknown to the schema, and every CEL rule
// passes. Numbers are first normalized as the server decodes a request body
// (integers as int64). The error aggregates field errors whose paths name the
// offending fields (e.g. "spec.minReplicas: Forbidden: unknown field ...");
// nil means valid.
func (v *Validator) Validate(obj map[string]any) error {
	return v.FieldErrors(obj).ToAggregate()
}

// FieldErrors is Validate's list of field errors, for callers that add their
// own checks before aggregating.
func (v *Validator) FieldErrors(obj map[string]any) field.ErrorList {
	norm, err := Normalize(obj)
	if err != nil {
		return field.ErrorList{field.Invalid(field.NewPath(""), nil, err.Error())}
	}
	var errs field.ErrorList
	if av := v.GVK.GroupVersion().String(); norm["apiVersion"] != av {
		errs = append(errs, field.Invalid(field.NewPath("apiVersion"), norm["apiVersion"], "want "+av))
	}
	if norm["kind"] != v.GVK.Kind {
		errs = append(errs, field.Invalid(field.NewPath("kind"), norm["kind"], "want "+v.GVK.Kind))
	}
	errs = append(errs, validation.ValidateCustomResource(nil, norm, v.schema)...)
	errs = append(errs, v.unknownFields(norm)...)
	celErrs, _ := v.cel.Validate(context.Background(), nil, v.structural, norm, nil, celconfig.RuntimeCELCostBudget)
	return append(errs, celErrs...)
}

// unknownFields reports every field the API server would prune from obj.
func (v *Validator) unknownFields(obj map[string]any) field.ErrorList {
	cp, err := Normalize(obj) // pruning works in place
	if err != nil {
		return field.ErrorList{field.InternalError(nil, err)} // unreachable: obj was normalized
	}
	var errs field.ErrorList
	pruned := pruning.PruneWithOptions(cp, v.structural, true, structuralschema.UnknownFieldPathOptions{TrackUnknownFieldPaths: true})
	for _, p := range pruned {
		errs = append(errs, field.Forbidden(field.NewPath(p), "unknown field (the API server would drop it)"))
	}
	return errs
}

// Normalize returns a deep copy of obj as the API server decodes a request
// body: through JSON, integers as int64 (which CEL rules need), floats as
// float64.
func Normalize(obj map[string]any) (map[string]any, error) {
	b, err := utiljson.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("encoding the object as JSON: %w", err)
	}
	var out map[string]any
	if err := utiljson.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("decoding the object from JSON: %w", err)
	}
	return out, nil
}
