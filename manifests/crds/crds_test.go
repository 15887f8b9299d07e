package crds

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apivalidation "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/validation"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/mlscale/mlscale/internal/crdschema"
)

func TestLoadServesEveryKindTheManifestsUse(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	set, err := load(ctx, t)
	if err != nil {
		t.Fatal(err)
	}
	for _, gvk := range []schema.GroupVersionKind{
		{Group: "keda.sh", Version: "v1alpha1", Kind: "ScaledObject"},
		{Group: "keda.sh", Version: "v1alpha1", Kind: "TriggerAuthentication"},
		{Group: "networking.istio.io", Version: "v1", Kind: "Gateway"},
		{Group: "networking.istio.io", Version: "v1", Kind: "VirtualService"},
		{Group: "security.istio.io", Version: "v1", Kind: "PeerAuthentication"},
		{Group: "monitoring.coreos.com", Version: "v1", Kind: "PodMonitor"},
		{Group: "monitoring.coreos.com", Version: "v1", Kind: "PrometheusRule"},
		{Group: "machinelearning.seldon.io", Version: "v1", Kind: "SeldonDeployment"},
	} {
		if set[gvk] == nil {
			t.Errorf("no CRD for %s", gvk)
		}
	}
}

// TestSeldonSchema: the hand-written SeldonDeployment schema takes a valid
// object and rejects mistakes in its own fields and, through the spliced
// PodSpec, in the pod spec.
func TestSeldonSchema(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	set, err := load(ctx, t)
	if err != nil {
		t.Fatal(err)
	}
	v := set[schema.GroupVersionKind{Group: "machinelearning.seldon.io", Version: "v1", Kind: "SeldonDeployment"}]
	valid := func() map[string]any {
		return map[string]any{
			"apiVersion": "machinelearning.seldon.io/v1", "kind": "SeldonDeployment",
			"metadata": map[string]any{"name": "iris", "namespace": "model"},
			"spec": map[string]any{
				"protocol": "seldon",
				"predictors": []any{map[string]any{
					"name": "default", "replicas": int64(1),
					"graph": map[string]any{"name": "classifier", "type": "MODEL", "children": []any{}},
					"componentSpecs": []any{map[string]any{
						"metadata": map[string]any{"labels": map[string]any{"app": "iris"}},
						"spec": map[string]any{"containers": []any{map[string]any{
							"name": "classifier", "image": "x",
							"resources": map[string]any{"requests": map[string]any{"cpu": "500m"}},
						}}},
						"hpaSpec": map[string]any{"minReplicas": int64(1), "maxReplicas": int64(20), "metricsv2": []any{map[string]any{
							"type": "Pods", "pods": map[string]any{
								"metric": map[string]any{"name": "requests_per_second"},
								"target": map[string]any{"type": "AverageValue", "averageValue": "4"},
							},
						}}},
					}},
				}},
			},
		}
	}
	pred := func(o map[string]any) map[string]any {
		return o["spec"].(map[string]any)["predictors"].([]any)[0].(map[string]any)
	}
	comp := func(o map[string]any) map[string]any { return pred(o)["componentSpecs"].([]any)[0].(map[string]any) }
	if err := v.Validate(valid()); err != nil {
		t.Fatalf("valid object rejected: %v", err)
	}
	for _, tc := range []struct {
		name, want string
		mutate     func(o map[string]any)
	}{
		{"no predictors", "spec.predictors: Required", func(o map[string]any) { delete(o["spec"].(map[string]any), "predictors") }},
		{"predictor without graph", "spec.predictors[0].graph: Required", func(o map[string]any) { delete(pred(o), "graph") }},
		{"hpaSpec field of another API", "hpaSpec.targetCPU", func(o map[string]any) { comp(o)["hpaSpec"].(map[string]any)["targetCPU"] = int64(40) }},
		{"hpaSpec without maxReplicas", "hpaSpec.maxReplicas: Required", func(o map[string]any) { delete(comp(o)["hpaSpec"].(map[string]any), "maxReplicas") }},
		{"replicas as a string", "spec.predictors[0].replicas", func(o map[string]any) { pred(o)["replicas"] = "two" }},
		{"misspelt container field (PodSpec spliced in)", "containers[0].imagePullPolicyy", func(o map[string]any) {
			comp(o)["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any)["imagePullPolicyy"] = "Always"
		}},
		{"pod spec without containers", "spec.containers: Required", func(o map[string]any) { comp(o)["spec"] = map[string]any{} }},
		{"metricsv2 target without type", "target.type: Required", func(o map[string]any) {
			m := comp(o)["hpaSpec"].(map[string]any)["metricsv2"].([]any)[0].(map[string]any)
			delete(m["pods"].(map[string]any)["target"].(map[string]any), "type")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := valid()
			tc.mutate(o)
			err := v.Validate(o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestSeldonCRDNeedsThePodSpec(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"not YAML", "{", "reading ScaledJob's CRD"},
		{"no versions", "kind: CustomResourceDefinition\nspec: {}\n", "no versions"},
		{"no PodSpec", "spec:\n  versions:\n  - schema: {openAPIV3Schema: {type: object}}\n", "no PodSpec"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := SeldonCRD([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}
}

func TestProxyOnly(t *testing.T) {
	for in, want := range map[string]string{
		"https://proxy.golang.org,direct":     "https://proxy.golang.org",
		"":                                    "https://proxy.golang.org",
		"off":                                 "https://proxy.golang.org",
		"https://a.example|https://b.example": "https://a.example,https://b.example",
		"direct":                              "https://proxy.golang.org",
	} {
		if got := proxyOnly(in); got != want {
			t.Errorf("proxyOnly(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestDownloadChecksThePinnedHash(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	m := Modules[0]
	m.Sum = "h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
	_, err := Download(ctx, m)
	if err == nil || !strings.Contains(err.Error(), "pinned") {
		t.Fatalf("got %v, want a hash mismatch", err)
	}
}

func load(ctx context.Context, t *testing.T) (crdschema.Set, error) {
	dir := t.TempDir()
	if _, err := Write(ctx, dir); err != nil {
		return nil, err
	}
	return crdschema.LoadDir(dir)
}

// TestCRDsAreInstallable runs kube-apiserver's own CRD validation
// (structural schema, names, versions) on every CRD written, as creating it
// would: the hand-written Seldon schema must be one the API server accepts,
// not only one crdschema can use.
func TestCRDsAreInstallable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	files, err := Write(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			var v1 apiextensionsv1.CustomResourceDefinition
			if err := yaml.Unmarshal(doc, &v1); err != nil || v1.Kind != "CustomResourceDefinition" {
				continue
			}
			var crd apiextensions.CustomResourceDefinition
			if err := apiextensionsv1.Convert_v1_CustomResourceDefinition_To_apiextensions_CustomResourceDefinition(&v1, &crd, nil); err != nil {
				t.Fatalf("%s %s: %v", filepath.Base(f), v1.Name, err)
			}
			// What the API server's create strategy sets before validating.
			for _, v := range crd.Spec.Versions {
				if v.Storage {
					crd.Status.StoredVersions = []string{v.Name}
				}
			}
			if errs := apivalidation.ValidateCustomResourceDefinition(ctx, &crd); len(errs) > 0 {
				t.Errorf("%s %s: the API server would refuse it: %v", filepath.Base(f), v1.Name, errs.ToAggregate())
			}
			n++
		}
	}
	if n < 8 {
		t.Errorf("validated %d CRDs, want at least 8", n)
	}
}
