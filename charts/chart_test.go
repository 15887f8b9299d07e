package charts

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	"github.com/mlscale/mlscale/collector"
	"github.com/mlscale/mlscale/internal/crdschema"
	"github.com/mlscale/mlscale/internal/testenv"
	"github.com/mlscale/mlscale/manifests/crds"
)

// helm returns the helm binary, failing under CI=true and skipping (with
// the reason) elsewhere when there is none.
func helm(t *testing.T) string {
	t.Helper()
	p, err := HelmBinary()
	if err != nil {
		testenv.RequireOrSkip(t, err.Error())
	}
	return p
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

// valueSet is one way of installing the chart: a values file from
// charts/mlscale/ci (which `helm lint` and chart-testing read too) or --set
// flags, with the release and namespace it is installed as.
type valueSet struct {
	name, release, namespace string
	args                     []string
}

func valueSets(t *testing.T) []valueSet {
	t.Helper()
	sets := []valueSet{{name: "defaults", release: "mlscale", namespace: "mlscale"}}
	files, err := filepath.Glob(filepath.Join(Dir(), "ci", "*-values.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no values files in %s/ci: %v", Dir(), err)
	}
	for _, f := range files {
		sets = append(sets, valueSet{name: strings.TrimSuffix(filepath.Base(f), "-values.yaml"), release: "mlscale", namespace: "mlscale", args: []string{"-f", f}})
	}
	// Another release name and namespace: every name and reference follows.
	sets = append(sets, valueSet{name: "other-release", release: "team-a", namespace: "autoscaling",
		args: []string{"--set", "keda.enabled=true", "--set", "monitoring.serviceMonitor.enabled=true"}})
	return sets
}

func TestLintStrict(t *testing.T) {
	h := helm(t)
	for _, vs := range valueSets(t) {
		t.Run(vs.name, func(t *testing.T) {
			args := append([]string{"lint", "--strict", Dir(), "--namespace", vs.namespace, "--kube-version", KubeVersion}, vs.args...)
			out, err := Run(ctx(t), h, args...)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if !strings.Contains(string(out), "0 chart(s) failed") {
				t.Fatalf("helm lint: %s", out)
			}
		})
	}
}

// TestBadValuesAreRejected: mistakes in values stop the install with a
// message that names them (values.schema.json, or the templates' checks).
func TestBadValuesAreRejected(t *testing.T) {
	h := helm(t)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"misspelt key", []string{"--set", "adapter.replica=2"}, "replica"},
		{"unknown certificate source", []string{"--set", "certificates.source=vault"}, "certificates.source"},
		{"unknown external metrics owner", []string{"--set", "externalMetrics.owner=prometheus-adapter"}, "externalMetrics.owner"},
		{"secret source without a CA", []string{"--set", "certificates.source=secret"}, "caBundle"},
		{"KEDA with mlscale owning external metrics", []string{"--set", "keda.enabled=true", "--set", "externalMetrics.owner=mlscale"}, "KEDA's metrics server must own external.metrics.k8s.io"},
		{"an extra arg that is not a flag", []string{"--set", "adapter.extraArgs[0]=v=4"}, "extraArgs"},
		{"issuerRef without a name", []string{"--set", "certificates.source=cert-manager", "--set", "certificates.certManager.issuerRef.kind=ClusterIssuer"}, "name"},
		{"a wake target of a kind the activator cannot scale", []string{"--set", "activator.enabled=true", "--set", "activator.wakeTargets[0].namespace=model",
			"--set", "activator.wakeTargets[0].kind=StatefulSet", "--set", "activator.wakeTargets[0].name=x"}, "wakeTargets"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Template(ctx(t), h, "mlscale", "mlscale", tc.args...)
			if err == nil {
				t.Fatal("rendered")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error does not mention %q: %v", tc.want, err)
			}
			t.Logf("rejected: %s", lineWith(err.Error(), tc.want))
		})
	}
}

// lineWith returns the line of s that contains want.
func lineWith(s, want string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, want) {
			return strings.TrimSpace(l)
		}
	}
	return s
}

var (
	crdOnce sync.Once
	crdSet  crdschema.Set
	crdErr  error
)

// loadCRDs reads the KEDA and Prometheus Operator CRDs from their pinned
// modules, as the manifests' tests do.
func loadCRDs(t *testing.T) crdschema.Set {
	t.Helper()
	crdOnce.Do(func() {
		dir, err := os.MkdirTemp("", "mlscale-chart-crds-")
		if err != nil {
			crdErr = err
			return
		}
		defer os.RemoveAll(dir)
		c, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if _, crdErr = crds.Write(c, dir); crdErr != nil {
			return
		}
		crdSet, crdErr = crdschema.LoadDir(dir)
	})
	if crdErr != nil {
		t.Fatalf("loading CRDs: %v", crdErr)
	}
	return crdSet
}

// apiService is apiregistration.k8s.io/v1 APIService's schema (the
// aggregator's types are not in this module): decoded strictly, so a
// misspelt field is an error here as on the server.
type apiService struct {
	APIVersion string         `json:"apiVersion"`
	Kind       string         `json:"kind"`
	Metadata   map[string]any `json:"metadata"`
	Spec       struct {
		Service *struct {
			Namespace string `json:"namespace"`
			Name      string `json:"name"`
			Port      *int32 `json:"port,omitempty"`
		} `json:"service"`
		Group                 string `json:"group"`
		Version               string `json:"version"`
		InsecureSkipTLSVerify bool   `json:"insecureSkipTLSVerify,omitempty"`
		CABundle              []byte `json:"caBundle,omitempty"`
		GroupPriorityMinimum  int32  `json:"groupPriorityMinimum"`
		VersionPriority       int32  `json:"versionPriority"`
	} `json:"spec"`
}

// TestRenderedObjectsAreValid renders every value set and checks each
// object: built-in kinds decode into their Go types with no unknown field,
// custom resources validate against their projects' CRDs (schema, unknown
// fields, CEL rules), and every object is namespaced where it should be.
func TestRenderedObjectsAreValid(t *testing.T) {
	h := helm(t)
	set := loadCRDs(t)
	for _, vs := range valueSets(t) {
		t.Run(vs.name, func(t *testing.T) {
			objs, err := Template(ctx(t), h, vs.release, vs.namespace, vs.args...)
			if err != nil {
				t.Fatal(err)
			}
			var unvalidated []string
			for _, o := range objs {
				gvk := o.GroupVersionKind()
				where := fmt.Sprintf("%s %s/%s", gvk.Kind, o.GetNamespace(), o.GetName())
				if o.GetName() == "" {
					t.Errorf("%s: no name", where)
				}
				switch {
				case gvk.Group == "apiregistration.k8s.io":
					var a apiService
					if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, &a, true); err != nil {
						t.Errorf("%s: %v", where, err)
					}
					if a.Spec.Service == nil || a.Spec.Service.Namespace != vs.namespace || a.Spec.Group == "" || a.Spec.Version == "" {
						t.Errorf("%s: service %+v, group %q, version %q", where, a.Spec.Service, a.Spec.Group, a.Spec.Version)
					}
				case scheme.Scheme.Recognizes(gvk):
					typed, _ := scheme.Scheme.New(gvk)
					if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, typed, true); err != nil {
						t.Errorf("%s: %v", where, err)
					}
				case set[gvk] != nil:
					if err := set[gvk].Validate(o.Object); err != nil {
						t.Errorf("%s: %v", where, err)
					}
				case gvk.Group == "cert-manager.io":
					// No pinned cert-manager CRDs (as in the manifests' tests):
					// reported, and checked against kustomize's below.
					unvalidated = append(unvalidated, where)
				default:
					t.Errorf("%s: no schema for %s", where, gvk)
				}
				namespaced := !slices.Contains([]string{"ClusterRole", "ClusterRoleBinding", "APIService", "ClusterIssuer", "Namespace"}, gvk.Kind)
				if namespaced != (o.GetNamespace() != "") {
					t.Errorf("%s: namespaced kind %v, namespace %q", where, namespaced, o.GetNamespace())
				}
			}
			if len(unvalidated) > 0 {
				t.Logf("not validated (no cert-manager CRDs): %s", strings.Join(unvalidated, ", "))
			}
		})
	}
}

// fullname is the prefix of the chart's object names for release: the
// release's name when it contains the chart's, else release-mlscale.
func fullname(release string) string {
	if strings.Contains(release, "mlscale") {
		return release
	}
	return release + "-mlscale"
}

// TestOtherReleaseNames: a release not named mlscale in another namespace
// names every object, reference and certificate after itself.
func TestOtherReleaseNames(t *testing.T) {
	h := helm(t)
	objs, err := Template(ctx(t), h, "team-a", "autoscaling", "--set", "keda.enabled=true")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if !strings.HasPrefix(o.GetName(), "team-a-mlscale-") && !strings.HasSuffix(o.GetName(), ".metrics.k8s.io") {
			t.Errorf("%s %s: not prefixed with the release's name", o.GetKind(), o.GetName())
		}
	}
	args := containerOf(t, find(objs, "Deployment", "team-a-mlscale-adapter")).Args
	if !slices.Contains(args, "--service-name=team-a-mlscale-adapter") {
		t.Errorf("adapter args %q lack --service-name=team-a-mlscale-adapter", args)
	}
	for _, a := range ofKind(objs, "APIService") {
		if svc, _, _ := unstructured.NestedString(a.Object, "spec", "service", "name"); svc != "team-a-mlscale-adapter" {
			t.Errorf("APIService %s routes to %q", a.GetName(), svc)
		}
	}
	if certs := secretCerts(t, objs, "team-a-mlscale-adapter-tls"); !slices.Contains(certs[0].DNSNames, "team-a-mlscale-adapter.autoscaling.svc") {
		t.Errorf("adapter certificate names %q", certs[0].DNSNames)
	}
	ta := find(objs, "TriggerAuthentication", "team-a-mlscale-scaler-tls")
	if ta == nil {
		t.Fatal("no TriggerAuthentication team-a-mlscale-scaler-tls")
	}
	refs, _, _ := unstructured.NestedSlice(ta.Object, "spec", "secretTargetRef")
	for _, r := range refs {
		if n := r.(map[string]any)["name"]; n != "team-a-mlscale-keda-client" {
			t.Errorf("TriggerAuthentication reads Secret %v", n)
		}
	}
}

func find(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
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

// secretCerts parses the certificates in Secret name: tls.crt, then ca.crt
// when present.
func secretCerts(t *testing.T, objs []*unstructured.Unstructured, name string) []*x509.Certificate {
	t.Helper()
	s := find(objs, "Secret", name)
	if s == nil {
		t.Fatalf("no Secret %s", name)
	}
	var out []*x509.Certificate
	for _, key := range []string{"tls.crt", "ca.crt"} {
		b64, ok, _ := unstructured.NestedString(s.Object, "data", key)
		if !ok {
			continue
		}
		out = append(out, parseCert(t, name+" "+key, decodeB64(t, b64)))
	}
	return out
}

func parseCert(t *testing.T, what string, pemBytes []byte) *x509.Certificate {
	t.Helper()
	blk, _ := pem.Decode(pemBytes)
	if blk == nil {
		t.Fatalf("%s: not PEM", what)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return c
}

func decodeB64(t *testing.T, s string) []byte {
	t.Helper()
	var b []byte
	if err := yaml.Unmarshal([]byte(`"`+s+`"`), &b); err != nil { // []byte from base64, as JSON does
		t.Fatalf("base64: %v", err)
	}
	return b
}

// TestGeneratedCertificates: with certificates.source=generate, the
// aggregator (caBundle), KEDA (the TriggerAuthentication's caCert) and the
// scaler (its client CA) all trust one CA, which signed the adapter's and
// the scaler's serving certificates for their Service names and KEDA's
// client certificate for client auth.
func TestGeneratedCertificates(t *testing.T) {
	h := helm(t)
	objs, err := Template(ctx(t), h, "mlscale", "mlscale", "--set", "keda.enabled=true")
	if err != nil {
		t.Fatal(err)
	}
	ca := secretCerts(t, objs, "mlscale-ca")[0]
	if !ca.IsCA {
		t.Fatal("mlscale-ca is not a CA")
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	for _, a := range ofKind(objs, "APIService") {
		b64, _, _ := unstructured.NestedString(a.Object, "spec", "caBundle")
		if got := parseCert(t, a.GetName()+" caBundle", decodeB64(t, b64)); !got.Equal(ca) {
			t.Errorf("APIService %s: caBundle is not the CA", a.GetName())
		}
	}
	for _, tc := range []struct {
		secret, dns string
		usage       x509.ExtKeyUsage
	}{
		{"mlscale-adapter-tls", "mlscale-adapter.mlscale.svc", x509.ExtKeyUsageServerAuth},
		{"mlscale-scaler-tls", "mlscale-scaler.mlscale.svc.cluster.local", x509.ExtKeyUsageServerAuth},
		{"mlscale-keda-client", "", x509.ExtKeyUsageClientAuth},
	} {
		certs := secretCerts(t, objs, tc.secret)
		if len(certs) != 2 || !certs[1].Equal(ca) {
			t.Errorf("%s: ca.crt is not the CA", tc.secret)
			continue
		}
		if _, err := certs[0].Verify(x509.VerifyOptions{DNSName: tc.dns, Roots: pool, KeyUsages: []x509.ExtKeyUsage{tc.usage}}); err != nil {
			t.Errorf("%s: %v", tc.secret, err)
		}
	}
	if s := find(objs, "Secret", "mlscale-keda-client"); s == nil || s.GetNamespace() != "model" {
		t.Errorf("KEDA's client Secret is not in namespace model: %v", s)
	}
	// Two renders are two CAs (no cluster to look the old one up in): the
	// reuse on upgrade is the lookup in apiservices.yaml, shown by e2e.
	again, err := Template(ctx(t), h, "mlscale", "mlscale")
	if err != nil {
		t.Fatal(err)
	}
	if secretCerts(t, again, "mlscale-ca")[0].Equal(ca) {
		t.Error("two renders made the same CA")
	}
}

// TestExternalMetricsOwner: the switch does what components/keda does.
func TestExternalMetricsOwner(t *testing.T) {
	h := helm(t)
	for _, tc := range []struct {
		name         string
		args         []string
		wantExternal bool
	}{
		{"default: mlscale", nil, true},
		{"auto with KEDA: KEDA", []string{"--set", "keda.enabled=true"}, false},
		{"keda without the TriggerAuthentication", []string{"--set", "externalMetrics.owner=keda"}, false},
		{"mlscale explicitly", []string{"--set", "externalMetrics.owner=mlscale"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := Template(ctx(t), h, "mlscale", "mlscale", tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			hasAPIService := find(objs, "APIService", "v1beta1.external.metrics.k8s.io") != nil
			args := containerOf(t, find(objs, "Deployment", "mlscale-adapter")).Args
			flagOff := slices.Contains(args, "--enable-external-metrics=false")
			if hasAPIService != tc.wantExternal || flagOff == tc.wantExternal {
				t.Errorf("external APIService %v, --enable-external-metrics=false %v; want mlscale serving it: %v", hasAPIService, flagOff, tc.wantExternal)
			}
			if find(objs, "APIService", "v1beta2.custom.metrics.k8s.io") == nil || find(objs, "APIService", "v1beta1.custom.metrics.k8s.io") == nil {
				t.Error("custom metrics APIServices missing")
			}
		})
	}
}

// TestCollectorConfig: the ConfigMap both components mount parses with the
// collector's strict parser, for the defaults and for every values file.
func TestCollectorConfig(t *testing.T) {
	h := helm(t)
	for _, vs := range valueSets(t) {
		t.Run(vs.name, func(t *testing.T) {
			objs, err := Template(ctx(t), h, vs.release, vs.namespace, vs.args...)
			if err != nil {
				t.Fatal(err)
			}
			cm := find(objs, "ConfigMap", fullname(vs.release)+"-adapter-config")
			if cm == nil {
				t.Fatal("no collector ConfigMap")
			}
			data, _, _ := unstructured.NestedString(cm.Object, "data", "adapter.yaml")
			if _, err := collector.ParseConfig([]byte(data)); err != nil {
				t.Errorf("adapter.yaml: %v\n%s", err, data)
			}
		})
	}
	// A typo in config reaches the adapter's strict parser, which refuses it
	// at start; here it is refused at test time.
	objs, err := Template(ctx(t), h, "mlscale", "mlscale", "--set", "config.scrape.intervall=1s")
	if err != nil {
		t.Fatal(err)
	}
	data, _, _ := unstructured.NestedString(find(objs, "ConfigMap", "mlscale-adapter-config").Object, "data", "adapter.yaml")
	if _, err := collector.ParseConfig([]byte(data)); err == nil {
		t.Error("config with scrape.intervall parsed")
	}
}

// containerOf returns the first container of Deployment d.
func containerOf(t *testing.T, d *unstructured.Unstructured) corev1.Container {
	t.Helper()
	if d == nil {
		t.Fatal("no such Deployment")
	}
	return typed[appsv1.Deployment](t, d).Spec.Template.Spec.Containers[0]
}
