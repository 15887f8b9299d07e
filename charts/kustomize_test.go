package charts

import (
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/mlscale/mlscale/collector"
	"github.com/mlscale/mlscale/manifests"
)

// kustomizeOf renders manifests/base with the given components, from an
// in-memory copy of manifests/ (nothing is written to the tree).
func kustomizeOf(t *testing.T, components ...string) []*unstructured.Unstructured {
	t.Helper()
	fsys := filesys.MakeFsInMemory()
	src := filepath.Join("..", "manifests")
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".yaml") {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if !strings.HasPrefix(rel, "base/") && !strings.HasPrefix(rel, "components/") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return fsys.WriteFile(filepath.Join("/manifests", rel), b)
	})
	if err != nil {
		t.Fatal(err)
	}
	k := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../../base]\ncomponents:\n"
	for _, c := range components {
		k += "- ../../components/" + c + "\n"
	}
	if err := fsys.WriteFile("/manifests/overlays/chart/kustomization.yaml", []byte(k)); err != nil {
		t.Fatal(err)
	}
	objs, err := manifests.Build(fsys, "/manifests/overlays/chart")
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// TestMatchesKustomize: installed as release mlscale in namespace mlscale,
// the chart deploys what kustomize's base (with the matching components)
// deploys: the same Deployments (pod specs compared whole: image, command,
// args, ports, probes, volumes, security), Services, RBAC rules and
// bindings, APIServices, TriggerAuthentications, cert-manager objects and
// collector config. The differences are the declared ones below.
func TestMatchesKustomize(t *testing.T) {
	h := helm(t)
	for _, tc := range []struct {
		name       string
		args       []string
		components []string
		kinds      []string // compared kinds; empty: all but the model's
	}{
		{"defaults = base", nil, nil, nil},
		{"keda = base + components/keda", []string{"--set", "keda.enabled=true"}, []string{"keda"}, nil},
		{"cert-manager and keda = base + components/cert-manager + keda",
			[]string{"--set", "keda.enabled=true", "--set", "certificates.source=cert-manager"}, []string{"cert-manager", "keda"}, nil},
		{"activator = base + components/hpa + activator + hpa-zero",
			[]string{"-f", filepath.Join(Dir(), "ci", "activator-values.yaml")}, []string{"hpa", "activator", "hpa-zero"}, nil},
		{"podMonitor = components/prometheus' PodMonitor",
			[]string{"--set", "monitoring.podMonitor.enabled=true"}, []string{"prometheus"}, []string{"PodMonitor"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			chart, err := Template(ctx(t), h, "mlscale", "mlscale", tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			kust := kustomizeOf(t, tc.components...)
			compared := 0
			for _, k := range kust {
				kind := k.GetKind()
				if tc.kinds != nil && !slices.Contains(tc.kinds, kind) {
					continue
				}
				// Not the chart's: namespaces (helm --create-namespace), the
				// example model (the user's workload) and Secrets (generated
				// apart, checked in TestGeneratedCertificates).
				if kind == "Namespace" || kind == "Secret" || (k.GetNamespace() == "model" && slices.Contains([]string{"Deployment", "Service", "HorizontalPodAutoscaler"}, kind)) {
					continue
				}
				where := fmt.Sprintf("%s %s/%s", kind, k.GetNamespace(), k.GetName())
				if kind == "ConfigMap" {
					compareConfig(t, k, find(chart, "ConfigMap", "mlscale-adapter-config"))
					compared++
					continue
				}
				c := findNS(chart, kind, k.GetNamespace(), k.GetName())
				if c == nil {
					t.Errorf("%s: in kustomize's output, not in the chart's", where)
					continue
				}
				compared++
				if d := compareObject(t, k, c); d != "" {
					t.Errorf("%s differs (-kustomize +chart):\n%s", where, d)
				}
			}
			if tc.kinds == nil {
				for _, c := range chart {
					kind := c.GetKind()
					if kind == "Secret" || kind == "ConfigMap" || findNS(kust, kind, c.GetNamespace(), c.GetName()) != nil {
						continue
					}
					t.Errorf("%s %s/%s: in the chart's output, not in kustomize's", kind, c.GetNamespace(), c.GetName())
				}
			}
			if compared == 0 {
				t.Fatal("nothing compared")
			}
			t.Logf("%d objects compared", compared)
		})
	}
}

func findNS(objs []*unstructured.Unstructured, kind, ns, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetNamespace() == ns && o.GetName() == name {
			return o
		}
	}
	return nil
}

// compareObject returns the differences that matter between kustomize's k
// and the chart's c, "" when none.
func compareObject(t *testing.T, k, c *unstructured.Unstructured) string {
	t.Helper()
	var diffs []string
	add := func(what string, a, b any) {
		if d := cmp.Diff(a, b); d != "" {
			diffs = append(diffs, what+":\n"+d)
		}
	}
	// Labels and annotations: the chart may add (helm.sh/chart, instance,
	// checksums), never drop or change one of kustomize's.
	subset := func(what string, a, b map[string]string) {
		for key, v := range a {
			if b[key] != v {
				diffs = append(diffs, fmt.Sprintf("%s %s: kustomize %q, chart %q", what, key, v, b[key]))
			}
		}
	}
	subset("label", k.GetLabels(), c.GetLabels())
	subset("annotation", k.GetAnnotations(), c.GetAnnotations())
	switch k.GetKind() {
	case "Deployment":
		kd, cd := typed[appsv1.Deployment](t, k), typed[appsv1.Deployment](t, c)
		add("replicas", kd.Spec.Replicas, cd.Spec.Replicas)
		subset("selector", kd.Spec.Selector.MatchLabels, cd.Spec.Selector.MatchLabels)
		subset("pod label", kd.Spec.Template.Labels, cd.Spec.Template.Labels)
		subset("pod annotation", kd.Spec.Template.Annotations, cd.Spec.Template.Annotations)
		add("pod spec", normalizePodSpec(kd.Spec.Template.Spec, false), normalizePodSpec(cd.Spec.Template.Spec, true))
	case "Service":
		ks, cs := typed[corev1.Service](t, k), typed[corev1.Service](t, c)
		add("ports", ks.Spec.Ports, cs.Spec.Ports)
		subset("selector", ks.Spec.Selector, cs.Spec.Selector)
	case "ClusterRole", "Role":
		add("rules", k.Object["rules"], c.Object["rules"])
	case "ClusterRoleBinding", "RoleBinding":
		add("roleRef", k.Object["roleRef"], c.Object["roleRef"])
		add("subjects", k.Object["subjects"], c.Object["subjects"])
	case "APIService":
		ks, cs := maps.Clone(k.Object["spec"].(map[string]any)), maps.Clone(c.Object["spec"].(map[string]any))
		delete(ks, "caBundle") // components/certs fills it from make certs; the chart from its own CA
		delete(cs, "caBundle")
		add("spec", ks, cs)
	case "ServiceAccount":
	default: // custom resources: TriggerAuthentication, Certificate, ClusterIssuer, PodMonitor
		add("spec", k.Object["spec"], c.Object["spec"])
	}
	return strings.Join(diffs, "\n")
}

func typed[T any](t *testing.T, u *unstructured.Unstructured) *T {
	t.Helper()
	var v T
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, &v, true); err != nil {
		t.Fatalf("%s %s: %v", u.GetKind(), u.GetName(), err)
	}
	return &v
}

// kustomizeHash is the suffix kustomize's configMapGenerator appends.
var kustomizeHash = regexp.MustCompile(`-[a-z0-9]{10}$`)

// normalizePodSpec removes the declared differences: the image tag (base:
// dev; chart: the chart's appVersion), kustomize's ConfigMap hash suffix
// (the chart rolls pods with a checksum annotation instead), and what the
// chart adds so it works under any release name and namespace: the
// adapter's --service-name and $POD_NAMESPACE (defaults mlscale-adapter and
// mlscale in the base).
func normalizePodSpec(s corev1.PodSpec, chart bool) corev1.PodSpec {
	s = *s.DeepCopy()
	for i := range s.Containers {
		c := &s.Containers[i]
		c.Image, _, _ = strings.Cut(c.Image, ":")
		if chart {
			c.Args = slices.DeleteFunc(c.Args, func(a string) bool { return a == "--service-name=mlscale-adapter" })
			c.Env = slices.DeleteFunc(c.Env, func(e corev1.EnvVar) bool {
				return e.Name == "POD_NAMESPACE" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace"
			})
			if len(c.Env) == 0 {
				c.Env = nil
			}
		}
	}
	for i := range s.Volumes {
		if cm := s.Volumes[i].ConfigMap; cm != nil {
			cm.Name = kustomizeHash.ReplaceAllString(cm.Name, "")
		}
	}
	return s
}

// compareConfig: the collector config kustomize generates and the chart's
// parse to the same collector.Config.
func compareConfig(t *testing.T, k, c *unstructured.Unstructured) {
	t.Helper()
	if c == nil {
		t.Error("the chart has no collector ConfigMap")
		return
	}
	parse := func(u *unstructured.Unstructured) *collector.Config {
		data, _, _ := unstructured.NestedString(u.Object, "data", "adapter.yaml")
		cfg, err := collector.ParseConfig([]byte(data))
		if err != nil {
			t.Fatalf("ConfigMap %s: %v", u.GetName(), err)
		}
		return cfg
	}
	if d := cmp.Diff(parse(k), parse(c)); d != "" {
		t.Errorf("collector config differs (-kustomize +chart):\n%s", d)
	}
}
