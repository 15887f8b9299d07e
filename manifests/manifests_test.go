package manifests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/mlscale/mlscale/adapter"
	"github.com/mlscale/mlscale/contract"
	"github.com/mlscale/mlscale/internal/testenv"
)

// imageRepos are the image names a container may use: the project's image,
// and the registry the eks overlay points it at.
var imageRepos = []string{"ghcr.io/mlscale/mlscale", "123456789012.dkr.ecr.us-east-1.amazonaws.com/mlscale"}

// binaries are the commands at the image root (see README.md).
var binaries = []string{"/modelserver", "/adapter", "/scaler", "/loadgen", "/activator"}

// servedMetrics are the adapter's and the scaler's default metric names
// (the metrics contract, contract/metrics.yaml).
var servedMetrics = contract.Metrics().ServedNames()

// activatorMetrics are served on Services from the activator's demand
// (adapter.DemandMetrics).
var activatorMetrics = func() []string {
	var out []string
	for n := range adapter.DemandMetrics {
		out = append(out, n)
	}
	return out
}()

func TestEveryOverlayRenders(t *testing.T) {
	all := renderAll(t)
	want := []string{"eks", "istio", "keda", "keda-combined", "keda-seldon", "local", "local-cpu", "local-keda", "local-keda-combined", "local-tuned", "local-zero", "prometheus", "seldon", "seldon-cpu", "zero"}
	var got []string
	for n := range all {
		got = append(got, n)
	}
	slices.Sort(got)
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("overlays (-want +got):\n%s", d)
	}
}

// into decodes u into a typed object, failing on fields the type does not
// have (a misspelt field is silently dropped by the API server otherwise).
func into[T any](t *testing.T, u *unstructured.Unstructured) *T {
	t.Helper()
	var v T
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, &v, true); err != nil {
		t.Fatalf("%s %s/%s: %v", u.GetKind(), u.GetNamespace(), u.GetName(), err)
	}
	return &v
}

func find(objs []*unstructured.Unstructured, kind, ns, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetNamespace() == ns && o.GetName() == name {
			return o
		}
	}
	return nil
}

func ofKind(objs []*unstructured.Unstructured, kind string) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind {
			out = append(out, o)
		}
	}
	return out
}

// podTemplate is a pod template found in a workload, with where it came from.
type podTemplate struct {
	where string
	ns    string
	meta  map[string]string // annotations
	label map[string]string
	spec  corev1.PodSpec
}

// podTemplates returns the pod templates of Deployments and of
// SeldonDeployments' componentSpecs.
func podTemplates(t *testing.T, objs []*unstructured.Unstructured) []podTemplate {
	t.Helper()
	var out []podTemplate
	for _, o := range objs {
		switch o.GetKind() {
		case "Deployment":
			d := into[appsv1.Deployment](t, o)
			out = append(out, podTemplate{"Deployment " + o.GetNamespace() + "/" + o.GetName(), o.GetNamespace(), d.Spec.Template.Annotations, d.Spec.Template.Labels, d.Spec.Template.Spec})
		case "SeldonDeployment":
			preds, _, _ := unstructured.NestedSlice(o.Object, "spec", "predictors")
			for i, p := range preds {
				specs, _, _ := unstructured.NestedSlice(p.(map[string]any), "componentSpecs")
				for j, cs := range specs {
					tmpl := into[corev1.PodTemplateSpec](t, &unstructured.Unstructured{Object: map[string]any{
						"metadata": cs.(map[string]any)["metadata"], "spec": cs.(map[string]any)["spec"],
					}})
					out = append(out, podTemplate{fmt.Sprintf("SeldonDeployment %s/%s predictor %d componentSpec %d", o.GetNamespace(), o.GetName(), i, j), o.GetNamespace(), tmpl.Annotations, tmpl.Labels, tmpl.Spec})
				}
			}
		}
	}
	return out
}

func TestPodSecurityProbesAndImages(t *testing.T) {
	for name, objs := range renderAll(t) {
		t.Run(name, func(t *testing.T) {
			pts := podTemplates(t, objs)
			if len(pts) == 0 {
				t.Fatal("no pod templates")
			}
			for _, pt := range pts {
				sc := pt.spec.SecurityContext
				if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
					t.Errorf("%s: pod securityContext.runAsNonRoot is not true", pt.where)
				}
				if sc == nil || sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
					t.Errorf("%s: pod seccompProfile is not RuntimeDefault", pt.where)
				}
				for _, c := range pt.spec.Containers {
					where := pt.where + " container " + c.Name
					csc := c.SecurityContext
					if csc == nil || csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation {
						t.Errorf("%s: allowPrivilegeEscalation is not false", where)
					}
					if csc == nil || csc.ReadOnlyRootFilesystem == nil || !*csc.ReadOnlyRootFilesystem {
						t.Errorf("%s: readOnlyRootFilesystem is not true", where)
					}
					if csc == nil || csc.Capabilities == nil || !slices.Equal(csc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(csc.Capabilities.Add) > 0 {
						t.Errorf("%s: capabilities are not drop [ALL]", where)
					}
					if c.ReadinessProbe == nil || c.LivenessProbe == nil {
						t.Errorf("%s: readiness and liveness probes are required", where)
					}
					repo, tag, ok := strings.Cut(c.Image, ":")
					if !ok || tag == "" || !slices.Contains(imageRepos, repo) {
						t.Errorf("%s: image %q, want one of %v with a tag", where, c.Image, imageRepos)
					}
					if len(c.Command) != 1 || !slices.Contains(binaries, c.Command[0]) {
						t.Errorf("%s: command %q, want one of %v", where, c.Command, binaries)
					}
					if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
						t.Errorf("%s: cpu and memory requests and a memory limit are required", where)
					}
					for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe, c.StartupProbe} {
						if p != nil && p.HTTPGet != nil && p.HTTPGet.Port.StrVal != "" && !hasPort(c, p.HTTPGet.Port.StrVal) {
							t.Errorf("%s: probe on port %q, which the container does not declare", where, p.HTTPGet.Port.StrVal)
						}
					}
				}
			}
		})
	}
}

func hasPort(c corev1.Container, name string) bool {
	for _, p := range c.Ports {
		if p.Name == name {
			return true
		}
	}
	return false
}

func flagValue(args []string, name string) (string, bool) {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

// TestModelServerPods checks what the seed's experiment depends on: half a
// core requested, metrics announced for scraping, and a grace period long
// enough for the preStop pause, the drain and in-flight requests.
func TestModelServerPods(t *testing.T) {
	for name, objs := range renderAll(t) {
		t.Run(name, func(t *testing.T) {
			n := 0
			for _, pt := range podTemplates(t, objs) {
				for _, c := range pt.spec.Containers {
					if c.Command[0] != "/modelserver" {
						continue
					}
					n++
					where := pt.where + " container " + c.Name
					// The local overlays give the model server a quarter of a
					// core, enforced by the local node's cgroups, so the seed's
					// load needs several pods on a two-core machine, and bound
					// its requests in flight so a saturated pod sheds load and
					// stays scrapable (README, "Capacity and targets").
					wantCPU, why := int64(500), "the seed's 500m"
					if strings.HasPrefix(name, "local") {
						wantCPU, why = 200, "the local overlays' 200m"
						if lim := c.Resources.Limits.Cpu().MilliValue(); lim != wantCPU {
							t.Errorf("%s: cpu limit %dm, want %dm (= request, Guaranteed)", where, lim, wantCPU)
						}
						if mem := c.Resources.Limits.Memory().Value(); mem != 1<<30 {
							t.Errorf("%s: memory limit %d, want 1Gi", where, mem)
						}
						if v, ok := flagValue(c.Args, "max-inflight"); v != "32" {
							t.Errorf("%s: --max-inflight=%q (set: %v), want 32", where, v, ok)
						}
					}
					if got := c.Resources.Requests.Cpu().MilliValue(); got != wantCPU {
						t.Errorf("%s: cpu request %dm, want %s", where, got, why)
					}
					if pt.label["app.kubernetes.io/name"] != "modelserver" {
						t.Errorf("%s: pod label app.kubernetes.io/name=%q, want modelserver (PodMonitor and dashboards select on it)", where, pt.label["app.kubernetes.io/name"])
					}
					listen, _ := flagValue(c.Args, "listen")
					_, port, _ := strings.Cut(listen, ":")
					want := map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": port, "prometheus.io/path": "/metrics"}
					for k, v := range want {
						if pt.meta[k] != v {
							t.Errorf("%s: annotation %s=%q, want %q", where, k, pt.meta[k], v)
						}
					}
					if !hasPortNumber(c, port) {
						t.Errorf("%s: listens on port %s but declares no such containerPort", where, port)
					}
					// Before the server stops accepting, endpoints must have
					// dropped the pod: a preStop sleep or the server's own
					// --drain-delay (serving while not ready) of at least 5 s.
					var pause time.Duration
					if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
						pause = time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
					}
					total := pause
					for _, f := range []string{"drain-delay", "shutdown-timeout"} {
						v, ok := flagValue(c.Args, f)
						if !ok {
							t.Errorf("%s: --%s not set; the grace period is computed from it", where, f)
							continue
						}
						d, err := time.ParseDuration(v)
						if err != nil {
							t.Errorf("%s: --%s=%q: %v", where, f, v, err)
						}
						total += d
					}
					drain, _ := flagValue(c.Args, "drain-delay")
					if d, _ := time.ParseDuration(drain); pause+d < 5*time.Second {
						t.Errorf("%s: preStop sleep %v + --drain-delay %v < 5s: requests still routed here would be refused", where, pause, d)
					}
					grace := time.Duration(*pt.spec.TerminationGracePeriodSeconds) * time.Second
					if grace <= total {
						t.Errorf("%s: terminationGracePeriodSeconds %v does not cover preStop + drain + shutdown = %v", where, grace, total)
					}
				}
			}
			if n == 0 {
				t.Error("no model server container")
			}
		})
	}
}

// apiService is the part of apiregistration.k8s.io/v1 APIService checked
// here (the aggregator's Go module is not worth a dependency for it).
type apiService struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Service *struct {
			Namespace string `json:"namespace"`
			Name      string `json:"name"`
			Port      *int32 `json:"port"`
		} `json:"service"`
		Group                 string `json:"group"`
		Version               string `json:"version"`
		InsecureSkipTLSVerify bool   `json:"insecureSkipTLSVerify"`
		CABundle              []byte `json:"caBundle"`
		GroupPriorityMinimum  int32  `json:"groupPriorityMinimum"`
		VersionPriority       int32  `json:"versionPriority"`
	} `json:"spec"`
}

func hasPortNumber(c corev1.Container, port string) bool {
	for _, p := range c.Ports {
		if fmt.Sprint(p.ContainerPort) == port {
			return true
		}
	}
	return false
}

// TestAdapterRegistration checks the aggregation wiring: every APIService
// points at the adapter's Service, whose port reaches the container, and is
// verifiable (caBundle, or cert-manager's CA injection); the RBAC an
// aggregated API server and the HPA controller need is bound.
func TestAdapterRegistration(t *testing.T) {
	for name, objs := range renderAll(t) {
		t.Run(name, func(t *testing.T) {
			var groups []string
			for _, o := range ofKind(objs, "APIService") {
				a := into[apiService](t, o)
				groups = append(groups, a.Spec.Version+"."+a.Spec.Group)
				if a.Spec.InsecureSkipTLSVerify {
					t.Errorf("APIService %s skips TLS verification", a.Name)
				}
				if len(a.Spec.CABundle) == 0 && a.Annotations["cert-manager.io/inject-ca-from"] == "" {
					t.Errorf("APIService %s has neither a caBundle nor cert-manager CA injection", a.Name)
				}
				if a.Spec.Service == nil || a.Spec.Service.Port == nil {
					t.Fatalf("APIService %s has no service port", a.Name)
				}
				svcObj := find(objs, "Service", a.Spec.Service.Namespace, a.Spec.Service.Name)
				if svcObj == nil {
					t.Fatalf("APIService %s: Service %s/%s is not in the overlay", a.Name, a.Spec.Service.Namespace, a.Spec.Service.Name)
				}
				svc := into[corev1.Service](t, svcObj)
				if !serviceReachesPod(t, objs, svc, *a.Spec.Service.Port) {
					t.Errorf("APIService %s: Service %s port %d reaches no container port", a.Name, svc.Name, *a.Spec.Service.Port)
				}
			}
			slices.Sort(groups)
			want := []string{"v1beta1.custom.metrics.k8s.io", "v1beta1.external.metrics.k8s.io", "v1beta2.custom.metrics.k8s.io"}
			if strings.Contains(name, "keda") {
				// KEDA's metrics server owns external.metrics.k8s.io.
				want = []string{"v1beta1.custom.metrics.k8s.io", "v1beta2.custom.metrics.k8s.io"}
			}
			if d := cmp.Diff(want, groups); d != "" {
				t.Errorf("APIServices (-want +got):\n%s", d)
			}

			bound := map[string]bool{}
			for _, o := range append(ofKind(objs, "ClusterRoleBinding"), ofKind(objs, "RoleBinding")...) {
				b := into[rbacv1.ClusterRoleBinding](t, o)
				for _, s := range b.Subjects {
					bound[fmt.Sprintf("%s %s/%s -> %s %s in %q", o.GetKind(), s.Namespace, s.Name, b.RoleRef.Kind, b.RoleRef.Name, o.GetNamespace())] = true
				}
			}
			for _, w := range []string{
				`ClusterRoleBinding mlscale/mlscale-adapter -> ClusterRole system:auth-delegator in ""`,
				`RoleBinding mlscale/mlscale-adapter -> Role extension-apiserver-authentication-reader in "kube-system"`,
				`ClusterRoleBinding mlscale/mlscale-adapter -> ClusterRole mlscale-workload-reader in ""`,
				`ClusterRoleBinding mlscale/mlscale-scaler -> ClusterRole mlscale-workload-reader in ""`,
				`ClusterRoleBinding kube-system/horizontal-pod-autoscaler -> ClusterRole mlscale-custom-metrics-server-resources in ""`,
			} {
				if !bound[w] {
					t.Errorf("missing binding: %s", w)
				}
			}
		})
	}
}

// serviceReachesPod reports whether port of svc maps to a declared container
// port of a pod template its selector matches.
func serviceReachesPod(t *testing.T, objs []*unstructured.Unstructured, svc *corev1.Service, port int32) bool {
	for _, sp := range svc.Spec.Ports {
		if sp.Port != port {
			continue
		}
		for _, pt := range podTemplates(t, objs) {
			if pt.ns != svc.Namespace || !selects(svc.Spec.Selector, pt.label) {
				continue
			}
			for _, c := range pt.spec.Containers {
				for _, cp := range c.Ports {
					if (sp.TargetPort.StrVal != "" && cp.Name == sp.TargetPort.StrVal) || (sp.TargetPort.StrVal == "" && cp.ContainerPort == sp.TargetPort.IntVal) {
						return true
					}
				}
			}
		}
	}
	return false
}

func selects(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// TestServicesSelectPods: a Service whose selector matches no pod template
// in the overlay routes nowhere.
func TestServicesSelectPods(t *testing.T) {
	for name, objs := range renderAll(t) {
		t.Run(name, func(t *testing.T) {
			for _, o := range ofKind(objs, "Service") {
				svc := into[corev1.Service](t, o)
				for _, p := range svc.Spec.Ports {
					if !serviceReachesPod(t, objs, svc, p.Port) {
						t.Errorf("Service %s/%s port %s (%d) reaches no container port", svc.Namespace, svc.Name, p.Name, p.Port)
					}
				}
			}
		})
	}
}

// TestSecretsExist: every Secret a pod or a TriggerAuthentication reads is
// made by the overlay itself, from `make certs` files or by cert-manager.
func TestSecretsExist(t *testing.T) {
	for name, objs := range renderAll(t) {
		t.Run(name, func(t *testing.T) {
			made := map[string]bool{}
			for _, o := range ofKind(objs, "Secret") {
				made[o.GetNamespace()+"/"+o.GetName()] = true
			}
			for _, o := range ofKind(objs, "Certificate") {
				s, _, _ := unstructured.NestedString(o.Object, "spec", "secretName")
				made[o.GetNamespace()+"/"+s] = true
			}
			for _, pt := range podTemplates(t, objs) {
				for _, v := range pt.spec.Volumes {
					if v.Secret != nil && !made[pt.ns+"/"+v.Secret.SecretName] {
						t.Errorf("%s: volume %s reads Secret %s, which the overlay does not make", pt.where, v.Name, v.Secret.SecretName)
					}
				}
			}
			for _, o := range ofKind(objs, "TriggerAuthentication") {
				refs, _, _ := unstructured.NestedSlice(o.Object, "spec", "secretTargetRef")
				for _, r := range refs {
					s := r.(map[string]any)["name"].(string)
					if !made[o.GetNamespace()+"/"+s] {
						t.Errorf("TriggerAuthentication %s reads Secret %s, which the overlay does not make", o.GetName(), s)
					}
				}
			}
		})
	}
}

// TestScalingRules: every autoscaler targets a workload of the overlay and
// asks for a metric the adapter or scaler serves, with the seed's bounds.
func TestScalingRules(t *testing.T) {
	type rule struct {
		where, target string
		min, max      int64
		metrics       []string
	}
	want := map[string][]string{
		"local":       {"HorizontalPodAutoscaler model/iris-model-autoscale -> Deployment iris-model-autoscale [1,20] requests_per_second"},
		"local-keda":  {"ScaledObject model/iris-model-autoscale -> Deployment iris-model-autoscale [0,20] external:requests_per_second external-push:requests_per_second"},
		"local-cpu":   {"HorizontalPodAutoscaler model/iris-model-autoscale -> Deployment iris-model-autoscale [1,20] cpu:40%"},
		"local-tuned": {"HorizontalPodAutoscaler model/iris-model-autoscale -> Deployment iris-model-autoscale [1,20] predicted_rows_per_second"},
		"istio":       {"HorizontalPodAutoscaler model/iris-model-autoscale -> Deployment iris-model-autoscale [1,20] requests_per_second"},
		"prometheus":  {"HorizontalPodAutoscaler model/iris-model-autoscale -> Deployment iris-model-autoscale [1,20] requests_per_second"},
		"eks":         {"HorizontalPodAutoscaler model/iris-model-autoscale -> Deployment iris-model-autoscale [1,20] requests_per_second"},
		"seldon":      {"SeldonDeployment model/iris-model-autoscale -> predictor autoscale [1,20] requests_per_second"},
		"seldon-cpu":  {"SeldonDeployment model/iris-model-autoscale -> predictor autoscale [1,20] cpu:40%"},
		"keda":        {"ScaledObject model/iris-model-autoscale -> Deployment iris-model-autoscale [1,20] external:requests_per_second external-push:requests_per_second"},
		"keda-seldon": {"ScaledObject model/iris-model-autoscale -> SeldonDeployment iris-model-autoscale [0,20] external-push:requests_per_second"},
		"local-zero":  {"HorizontalPodAutoscaler model/iris-model-autoscale -> Deployment iris-model-autoscale [0,20] Service/activator_arrivals_per_second Service/activator_concurrency"},
		"zero":        {"HorizontalPodAutoscaler model/iris-model-autoscale -> Deployment iris-model-autoscale [0,20] Service/activator_arrivals_per_second Service/activator_concurrency"},
	}
	// keda-combined is keda with the scaler served by the adapter: the same
	// ScaledObject.
	want["keda-combined"] = want["keda"]
	want["local-keda-combined"] = want["local-keda"]
	for name, objs := range renderAll(t) {
		t.Run(name, func(t *testing.T) {
			var got []string
			for _, o := range ofKind(objs, "HorizontalPodAutoscaler") {
				h := into[autoscalingv2.HorizontalPodAutoscaler](t, o)
				if find(objs, h.Spec.ScaleTargetRef.Kind, h.Namespace, h.Spec.ScaleTargetRef.Name) == nil {
					t.Errorf("HPA %s targets %s %s, which is not in the overlay", h.Name, h.Spec.ScaleTargetRef.Kind, h.Spec.ScaleTargetRef.Name)
				}
				got = append(got, fmt.Sprintf("HorizontalPodAutoscaler %s/%s -> %s %s [%d,%d] %s", h.Namespace, h.Name, h.Spec.ScaleTargetRef.Kind, h.Spec.ScaleTargetRef.Name, *h.Spec.MinReplicas, h.Spec.MaxReplicas, metricNames(h.Spec.Metrics)))
			}
			for _, o := range ofKind(objs, "SeldonDeployment") {
				preds, _, _ := unstructured.NestedSlice(o.Object, "spec", "predictors")
				for _, p := range preds {
					pm := p.(map[string]any)
					specs, _, _ := unstructured.NestedSlice(pm, "componentSpecs")
					for _, cs := range specs {
						hpa, ok, _ := unstructured.NestedMap(cs.(map[string]any), "hpaSpec")
						if !ok {
							continue
						}
						spec := into[autoscalingv2.HorizontalPodAutoscalerSpec](t, &unstructured.Unstructured{Object: map[string]any{
							"minReplicas": hpa["minReplicas"], "maxReplicas": hpa["maxReplicas"], "metrics": hpa["metricsv2"],
						}})
						got = append(got, fmt.Sprintf("SeldonDeployment %s/%s -> predictor %s [%d,%d] %s", o.GetNamespace(), o.GetName(), pm["name"], *spec.MinReplicas, spec.MaxReplicas, metricNames(spec.Metrics)))
					}
				}
			}
			for _, o := range ofKind(objs, "ScaledObject") {
				kind, _, _ := unstructured.NestedString(o.Object, "spec", "scaleTargetRef", "kind")
				target, _, _ := unstructured.NestedString(o.Object, "spec", "scaleTargetRef", "name")
				if find(objs, kind, o.GetNamespace(), target) == nil {
					t.Errorf("ScaledObject %s targets %s %s, which is not in the overlay", o.GetName(), kind, target)
				}
				lo, _, _ := unstructured.NestedInt64(o.Object, "spec", "minReplicaCount")
				hi, _, _ := unstructured.NestedInt64(o.Object, "spec", "maxReplicaCount")
				trig, _, _ := unstructured.NestedSlice(o.Object, "spec", "triggers")
				var ms []string
				for _, tr := range trig {
					tm := tr.(map[string]any)
					md := tm["metadata"].(map[string]any)
					ms = append(ms, fmt.Sprintf("%s:%s", tm["type"], md["metricName"]))
					workload := md["deploymentName"]
					if kind == "SeldonDeployment" {
						workload = md["seldonDeploymentName"]
					}
					if workload != target {
						t.Errorf("ScaledObject %s trigger %s asks about %v, but scales %s", o.GetName(), tm["name"], workload, target)
					}
					if !strings.HasPrefix(fmt.Sprint(md["scalerAddress"]), "mlscale-scaler.mlscale.svc") {
						t.Errorf("ScaledObject %s trigger %s: scalerAddress %v is not the scaler's Service", o.GetName(), tm["name"], md["scalerAddress"])
					}
				}
				got = append(got, fmt.Sprintf("ScaledObject %s/%s -> %s %s [%d,%d] %s", o.GetNamespace(), o.GetName(), kind, target, lo, hi, strings.Join(ms, " ")))
			}
			if d := cmp.Diff(want[name], got); d != "" {
				t.Errorf("scaling rules (-want +got):\n%s", d)
			}
		})
	}
}

func metricNames(ms []autoscalingv2.MetricSpec) string {
	var out []string
	for _, m := range ms {
		switch m.Type {
		case autoscalingv2.PodsMetricSourceType:
			out = append(out, m.Pods.Metric.Name)
			if !slices.Contains(servedMetrics, m.Pods.Metric.Name) {
				out = append(out, "(not served!)")
			}
		case autoscalingv2.ObjectMetricSourceType:
			out = append(out, m.Object.DescribedObject.Kind+"/"+m.Object.Metric.Name)
			if !slices.Contains(servedMetrics, m.Object.Metric.Name) && !slices.Contains(activatorMetrics, m.Object.Metric.Name) {
				out = append(out, "(not served!)")
			}
		case autoscalingv2.ResourceMetricSourceType:
			out = append(out, fmt.Sprintf("%s:%d%%", m.Resource.Name, *m.Resource.Target.AverageUtilization))
		default:
			out = append(out, string(m.Type))
		}
	}
	return strings.Join(out, " ")
}

// TestLocalOverlayRunsAsProcesses checks the conventions the local node
// agent relies on (README.md): listening on $(POD_IP) from the downward API,
// and files either in the pod's volumes or relative to the repository root.
func TestLocalOverlayRunsAsProcesses(t *testing.T) {
	objs := renderAll(t)["local"]
	for _, pt := range podTemplates(t, objs) {
		for _, c := range pt.spec.Containers {
			where := pt.where + " container " + c.Name
			var podIP bool
			for _, e := range c.Env {
				if e.Name == "POD_IP" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.podIP" {
					podIP = true
				}
			}
			if !podIP {
				t.Errorf("%s: no POD_IP from status.podIP", where)
			}
			var listens int
			for _, a := range c.Args {
				name, val, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
				if strings.Contains(name, "listen") || strings.HasSuffix(name, "address") {
					listens++
					if !strings.HasPrefix(val, "$(POD_IP)") {
						t.Errorf("%s: %s does not listen on $(POD_IP)", where, a)
					}
				}
				if strings.HasSuffix(name, "-file") || name == "model" || name == "config" {
					if filepath.IsAbs(val) {
						if !underMount(c, val) {
							t.Errorf("%s: %s is absolute but under no volumeMount; the node agent has only the repository and the pod's volumes", where, a)
						}
					} else if _, err := os.Stat(filepath.Join("..", val)); err != nil {
						t.Errorf("%s: %s: %v (relative paths are read from the repository root)", where, a, err)
					}
				}
			}
			if listens == 0 {
				t.Errorf("%s: no listen address set", where)
			}
		}
	}
}

// privateKeyPEM matches any PEM private key block (PKCS#8, EC, RSA).
var privateKeyPEM = regexp.MustCompile(`-----BEGIN [A-Z ]*PRIVATE KEY-----`)

func underMount(c corev1.Container, p string) bool {
	for _, m := range c.VolumeMounts {
		if strings.HasPrefix(p, strings.TrimSuffix(m.MountPath, "/")+"/") {
			return true
		}
	}
	return false
}

// TestNoCommittedPrivateKeys guards the rule that keys are generated, never
// committed: no tracked file under manifests/ holds one.
func TestNoCommittedPrivateKeys(t *testing.T) {
	out, err := exec.Command("git", "ls-files", "-z", ".").Output()
	if err != nil {
		testenv.RequireOrSkip(t, fmt.Sprintf("not a git checkout (git ls-files): %v", err))
	}
	for _, f := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // deleted in the work tree
		}
		if privateKeyPEM.Match(b) {
			t.Errorf("%s holds a private key", f)
		}
	}
	ignored := exec.Command("git", "check-ignore", "-q", "components/certs/generated/adapter.key")
	if err := ignored.Run(); err != nil {
		t.Errorf("components/certs/generated/ is not git-ignored: %v", err)
	}
}
