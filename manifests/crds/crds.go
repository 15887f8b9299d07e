// Package crds locates the CustomResourceDefinitions mlscale's manifests are
// validated against: each project's own CRDs, read from its Go module at a
// pinned version through the Go module proxy (`go mod download`, checked
// against the pinned go.sum hash), and Seldon's, which the proxy does not
// serve, from the schema kept in seldon/ beside this file.
//
// The pins below are the only place these versions are named; the local
// cluster runs the same KEDA (localcluster/build reads KEDAVersion from here).
package crds

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"
)

// KEDAVersion is the KEDA release whose CRDs the manifests are checked
// against and which the local cluster builds and runs.
const KEDAVersion = "v2.21.0"

// Module is one project's Go module and the CRD files in it.
type Module struct {
	Project string
	Path    string
	Version string
	// Sum is the module zip's go.sum hash ("h1:..."): what was pinned is
	// what is read, whichever proxy served it.
	Sum string
	// Files are paths inside the module.
	Files []string
}

// Modules are the pinned CRD sources.
var Modules = []Module{
	{
		Project: "keda", Path: "github.com/kedacore/keda/v2", Version: KEDAVersion,
		Sum: "h1:R6z2HZvstK4RLUMxroNACzBj74xGxt3kG59b5Xc+Xps=",
		Files: []string{
			"config/crd/bases/keda.sh_scaledobjects.yaml",
			"config/crd/bases/keda.sh_scaledjobs.yaml",
			"config/crd/bases/keda.sh_triggerauthentications.yaml",
			"config/crd/bases/keda.sh_clustertriggerauthentications.yaml",
		},
	},
	{
		Project: "istio", Path: "istio.io/api", Version: "v1.32.0",
		Sum:   "h1:37mJvg9I0biYZAEQF+MATs4FNeCpXEIVO3LFpVb6iNM=",
		Files: []string{"kubernetes/customresourcedefinitions.gen.yaml"},
	},
	{
		Project: "prometheus-operator", Path: "github.com/prometheus-operator/prometheus-operator", Version: "v0.85.0",
		Sum: "h1:M5xLCLEoaW2IJfnuCwFzzpL+jSVQu3KGT84Pye+fW8s=",
		Files: []string{
			"example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml",
			"example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
			"example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
		},
	},
}

// seldonSchema is SeldonDeployment's schema with a placeholder where the
// PodSpec goes (see the file's header for where it comes from).
//
//go:embed seldon/seldondeployments.yaml
var seldonSchema []byte

// podSpecSource is where Kubernetes' PodSpec schema is read from for
// SeldonDeployment's componentSpecs: KEDA's ScaledJob CRD carries it as
// controller-gen renders core/v1.PodSpec.
const podSpecSource = "config/crd/bases/keda.sh_scaledjobs.yaml"

// Write downloads the pinned modules (a no-op when the module cache has
// them) and writes every CRD into dir: <project>/<file> as published, and
// seldon/seldondeployments.yaml with the PodSpec spliced in. It returns the
// files written.
func Write(ctx context.Context, dir string) ([]string, error) {
	var out []string
	var kedaDir string
	for _, m := range Modules {
		src, err := Download(ctx, m)
		if err != nil {
			return nil, err
		}
		if m.Project == "keda" {
			kedaDir = src
		}
		for _, f := range m.Files {
			data, err := os.ReadFile(filepath.Join(src, f))
			if err != nil {
				return nil, fmt.Errorf("reading %s's CRD %s from %s@%s: %w", m.Project, f, m.Path, m.Version, err)
			}
			dst := filepath.Join(dir, m.Project, filepath.Base(f))
			if err := writeFile(dst, data); err != nil {
				return nil, err
			}
			out = append(out, dst)
		}
	}
	podSpec, err := os.ReadFile(filepath.Join(kedaDir, podSpecSource))
	if err != nil {
		return nil, fmt.Errorf("reading the PodSpec schema's source: %w", err)
	}
	seldon, err := SeldonCRD(podSpec)
	if err != nil {
		return nil, err
	}
	dst := filepath.Join(dir, "seldon", "seldondeployments.yaml")
	if err := writeFile(dst, seldon); err != nil {
		return nil, err
	}
	return append(out, dst), nil
}

func writeFile(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// Download runs `go mod download -json` for m through the module proxy only
// (GOPROXY's "direct" and "off" entries dropped: no version control
// checkout) and returns the module's directory in the module cache after
// checking its hash against m.Sum.
func Download(ctx context.Context, m Module) (string, error) {
	what := m.Path + "@" + m.Version
	tmp, err := os.MkdirTemp("", "mlscale-crds-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", what)
	cmd.Dir = tmp // outside any module: go.mod is neither read nor changed
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod", "GOPROXY="+proxyOnly(goEnv(ctx, "GOPROXY")))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	var res struct{ Dir, Sum, Error string }
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		return "", fmt.Errorf("go mod download %s (for %s's CRDs): %v: %s", what, m.Project, errors.Join(runErr, err), strings.TrimSpace(stderr.String()))
	}
	if res.Error != "" || runErr != nil {
		return "", fmt.Errorf("go mod download %s (for %s's CRDs): %s", what, m.Project, firstNonEmpty(res.Error, strings.TrimSpace(stderr.String()), fmt.Sprint(runErr)))
	}
	if res.Sum != m.Sum {
		return "", fmt.Errorf("go mod download %s: hash %s, pinned %s", what, res.Sum, m.Sum)
	}
	return res.Dir, nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func goEnv(ctx context.Context, name string) string {
	out, err := exec.CommandContext(ctx, "go", "env", name).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// proxyOnly keeps GOPROXY's proxies and drops "direct" and "off"; with none
// left it is proxy.golang.org.
func proxyOnly(goproxy string) string {
	var keep []string
	for _, p := range strings.FieldsFunc(goproxy, func(r rune) bool { return r == ',' || r == '|' }) {
		if p = strings.TrimSpace(p); p != "" && p != "direct" && p != "off" {
			keep = append(keep, p)
		}
	}
	if len(keep) == 0 {
		return "https://proxy.golang.org"
	}
	return strings.Join(keep, ",")
}

// SeldonCRD returns SeldonDeployment's CRD: the schema in seldon/ with the
// node marked x-mlscale-podspec replaced by the PodSpec schema of the
// ScaledJob CRD in scaledJobCRD (spec.jobTargetRef.template.spec).
func SeldonCRD(scaledJobCRD []byte) ([]byte, error) {
	var sj map[string]any
	if err := yaml.Unmarshal(scaledJobCRD, &sj); err != nil {
		return nil, fmt.Errorf("reading ScaledJob's CRD for the PodSpec schema: %w", err)
	}
	versions, _ := dig(sj, "spec", "versions").([]any)
	if len(versions) == 0 {
		return nil, errors.New("ScaledJob's CRD has no versions")
	}
	podSpec, ok := dig(versions[0], "schema", "openAPIV3Schema", "properties", "spec", "properties", "jobTargetRef",
		"properties", "template", "properties", "spec").(map[string]any)
	if !ok || dig(podSpec, "properties", "containers") == nil {
		return nil, errors.New("ScaledJob's CRD has no PodSpec at spec.jobTargetRef.template.spec")
	}
	var crd map[string]any
	if err := yaml.Unmarshal(seldonSchema, &crd); err != nil {
		return nil, fmt.Errorf("reading seldon/seldondeployments.yaml: %w", err)
	}
	n := splice(crd, podSpec)
	if n != 1 {
		return nil, fmt.Errorf("seldon/seldondeployments.yaml: %d x-mlscale-podspec placeholders, want 1", n)
	}
	out, err := yaml.Marshal(crd)
	if err != nil {
		return nil, fmt.Errorf("encoding SeldonDeployment's CRD: %w", err)
	}
	return append([]byte("# Generated by mlscale's manifests/crds from seldon/seldondeployments.yaml and KEDA "+KEDAVersion+"'s PodSpec schema.\n"), out...), nil
}

// splice replaces, in place, every map marked x-mlscale-podspec with
// podSpec, and returns how many it replaced.
func splice(v any, podSpec map[string]any) int {
	n := 0
	switch t := v.(type) {
	case map[string]any:
		for k, c := range t {
			if m, ok := c.(map[string]any); ok && m["x-mlscale-podspec"] == true {
				t[k] = podSpec
				n++
				continue
			}
			n += splice(c, podSpec)
		}
	case []any:
		for _, c := range t {
			n += splice(c, podSpec)
		}
	}
	return n
}

func dig(v any, path ...string) any {
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}
