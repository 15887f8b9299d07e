package manifests

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/mlscale/mlscale/collector"
	"github.com/mlscale/mlscale/internal/crdschema"
	"github.com/mlscale/mlscale/scaler/trigger"
)

// loadCRDs reads every CRD of crdsDir into group/version/kind -> validator.
// The e2e test applies the same CRDs to a real API server; this is the fast,
// in-process half of that check.
func loadCRDs(t *testing.T) crdschema.Set {
	t.Helper()
	dir := crdsDir(t)
	crds, err := crdschema.LoadDir(dir)
	if err != nil {
		t.Fatalf("loading CRDs from %s: %v", dir, err)
	}
	return crds
}

// deepCopyJSON copies obj the way the API server decodes a request body
// (integers as int64, which CEL rules need).
func deepCopyJSON(t *testing.T, obj map[string]any) map[string]any {
	t.Helper()
	out, err := crdschema.Normalize(obj)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestCustomResourcesMatchCRDs validates every Seldon, Istio, KEDA and
// Prometheus Operator object of every overlay against the real CRDs, and
// every mlscale trigger's metadata with the scaler's own parser, as KEDA
// forwards it.
func TestCustomResourcesMatchCRDs(t *testing.T) {
	crds := loadCRDs(t)
	var served []string
	for _, r := range collector.DefaultRules() {
		served = append(served, r.Name)
	}
	for name, objs := range renderAll(t) {
		t.Run(name, func(t *testing.T) {
			for _, o := range objs {
				gvk := o.GroupVersionKind()
				if gvk.Group == "" || !strings.Contains(gvk.Group, ".") || strings.HasSuffix(gvk.Group, ".k8s.io") || gvk.Group == "apps" || gvk.Group == "policy" || gvk.Group == "autoscaling" {
					continue // built-in kinds: TestPod* and the e2e dry-run cover them
				}
				c := crds[gvk]
				if c == nil {
					if gvk.Group != "cert-manager.io" {
						t.Errorf("%s %s/%s: no CRD for %s in manifests/crds", gvk.Kind, o.GetNamespace(), o.GetName(), gvk.GroupVersion())
					}
					continue
				}
				if err := c.Validate(o.Object); err != nil {
					t.Errorf("%s %s/%s: %v", gvk.Kind, o.GetNamespace(), o.GetName(), err)
				}
				if gvk.Kind != "ScaledObject" {
					continue
				}
				triggers, _, _ := unstructuredSlice(o.Object, "spec", "triggers")
				for i, tr := range triggers {
					tm := tr.(map[string]any)
					if tm["type"] != "external" && tm["type"] != "external-push" {
						continue
					}
					md := map[string]string{}
					for k, v := range tm["metadata"].(map[string]any) {
						md[k] = fmt.Sprint(v)
					}
					ref := &pb.ScaledObjectRef{Name: o.GetName(), Namespace: o.GetNamespace(), ScalerMetadata: md}
					if _, err := trigger.Parse(ref, served); err != nil {
						t.Errorf("ScaledObject %s trigger %d: the scaler would reject its metadata: %v", o.GetName(), i, err)
					}
				}
			}
		})
	}
}

// TestBrokenCustomResourcesAreRejected shows the validation above bites.
func TestBrokenCustomResourcesAreRejected(t *testing.T) {
	crds := loadCRDs(t)
	all := renderAll(t)
	for _, tc := range []struct {
		name, overlay, kind string
		mutate              func(map[string]any)
	}{
		{"SeldonDeployment with an unknown hpaSpec field", "seldon", "SeldonDeployment", func(o map[string]any) {
			p := o["spec"].(map[string]any)["predictors"].([]any)[0].(map[string]any)
			p["componentSpecs"].([]any)[0].(map[string]any)["hpaSpec"].(map[string]any)["targetCPU"] = int64(40)
		}},
		{"ScaledObject without scaleTargetRef", "keda", "ScaledObject", func(o map[string]any) {
			delete(o["spec"].(map[string]any), "scaleTargetRef")
		}},
		{"Gateway port as a string", "istio", "Gateway", func(o map[string]any) {
			o["spec"].(map[string]any)["servers"].([]any)[0].(map[string]any)["port"].(map[string]any)["number"] = "eighty"
		}},
		{"PodMonitor with a misspelt endpoint field", "prometheus", "PodMonitor", func(o map[string]any) {
			o["spec"].(map[string]any)["podMetricsEndpoints"].([]any)[0].(map[string]any)["intervall"] = "5s"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := ofKind(all[tc.overlay], tc.kind)
			if len(objs) == 0 {
				t.Fatalf("no %s in %s", tc.kind, tc.overlay)
			}
			obj := deepCopyJSON(t, objs[0].Object)
			tc.mutate(obj)
			gvk := objs[0].GroupVersionKind()
			err := crds[gvk].Validate(obj)
			if err == nil {
				t.Fatal("accepted")
			}
			t.Logf("rejected as expected: %v", err)
		})
	}
}

func unstructuredSlice(obj map[string]any, fields ...string) ([]any, bool, error) {
	var cur any = obj
	for _, f := range fields {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false, nil
		}
		cur = m[f]
	}
	s, ok := cur.([]any)
	return s, ok, nil
}

// TestCollectorConfigs: the config each adapter and scaler mounts parses with
// the collector's strict parser; a scraping process's discovery selects
// exactly the overlay's model-server pod templates, and a PromQL-source
// adapter (--prometheus-url) reads only series the overlay's recording rules
// record.
func TestCollectorConfigs(t *testing.T) {
	for name, objs := range renderAll(t) {
		t.Run(name, func(t *testing.T) {
			recorded := map[string]bool{}
			for _, o := range ofKind(objs, "PrometheusRule") {
				groups, _, _ := unstructured.NestedSlice(o.Object, "spec", "groups")
				for _, g := range groups {
					rs, _, _ := unstructured.NestedSlice(g.(map[string]any), "rules")
					for _, r := range rs {
						if rec, ok := r.(map[string]any)["record"].(string); ok {
							recorded[rec] = true
						}
					}
				}
			}
			n := 0
			for _, pt := range podTemplates(t, objs) {
				for _, c := range pt.spec.Containers {
					if c.Command[0] != "/adapter" && c.Command[0] != "/scaler" {
						continue
					}
					n++
					if slices.Contains(c.Args, "--keda-scaler") {
						n++ // the adapter serves the scaler too (keda-combined)
					}
					where := pt.where + " container " + c.Name
					path, ok := flagValue(c.Args, "config")
					if !ok {
						t.Errorf("%s: no --config", where)
						continue
					}
					cfg, err := collector.ParseConfig([]byte(mountedFile(t, objs, pt, c, path)))
					if err != nil {
						t.Errorf("%s: %s: %v", where, path, err)
						continue
					}
					if _, promql := flagValue(c.Args, "prometheus-url"); promql {
						for _, r := range cfg.Rules {
							if !recorded[r.Series] {
								t.Errorf("%s: PromQL rule %s reads %s, which no recording rule of the overlay records", where, r.Name, r.Series)
							}
						}
						continue
					}
					sel, err := labels.Parse(cfg.Discovery.Selector)
					if err != nil || cfg.Discovery.Selector == "" {
						t.Errorf("%s: discovery.selector %q: %v", where, cfg.Discovery.Selector, err)
						continue
					}
					for _, p := range podTemplates(t, objs) {
						isModel := slices.ContainsFunc(p.spec.Containers, func(c corev1.Container) bool { return c.Command[0] == "/modelserver" })
						selected := sel.Matches(labels.Set(p.label)) && (len(cfg.Discovery.Namespaces) == 0 || slices.Contains(cfg.Discovery.Namespaces, p.ns))
						if selected != isModel {
							t.Errorf("%s: discovery selects %s = %v, but it runs the model server = %v", where, p.where, selected, isModel)
						}
					}
				}
			}
			if n != 2 {
				t.Errorf("found %d collector readers (adapter, scaler, or an adapter with --keda-scaler counting as both), want 2", n)
			}
		})
	}
}

// mountedFile returns the content of path as the container sees it through a
// ConfigMap volume of the overlay.
func mountedFile(t *testing.T, objs []*unstructured.Unstructured, pt podTemplate, c corev1.Container, path string) string {
	t.Helper()
	for _, m := range c.VolumeMounts {
		rel, ok := strings.CutPrefix(path, strings.TrimSuffix(m.MountPath, "/")+"/")
		if !ok {
			continue
		}
		for _, v := range pt.spec.Volumes {
			if v.Name != m.Name || v.ConfigMap == nil {
				continue
			}
			cm := find(objs, "ConfigMap", pt.ns, v.ConfigMap.Name)
			if cm == nil {
				t.Fatalf("%s: ConfigMap %s is not in the overlay", pt.where, v.ConfigMap.Name)
			}
			data, _, _ := unstructured.NestedString(cm.Object, "data", rel)
			return data
		}
	}
	t.Fatalf("%s: %s is in no ConfigMap volume", pt.where, path)
	return ""
}
