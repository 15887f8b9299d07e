// Package charts holds mlscale's Helm chart (charts/mlscale) and runs the
// real helm binary against it: the tests here lint and render it, the e2e
// tests install it. Helm is a binary built from the Go module proxy into the
// cache (`make deps-helm`), not a Go dependency: its Kubernetes modules
// would pin ours.
package charts

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// Dir is the chart's directory, found from this source file, so tests in
// any package can name it.
func Dir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "mlscale")
}

// HelmBinary returns the helm to run: $MLSCALE_HELM (the Makefile sets it),
// else $MLSCALE_CACHE/bin/helm (default ~/.cache/mlscale/bin/helm, where
// `make deps-helm` builds it), else helm on PATH.
func HelmBinary() (string, error) {
	var tried []string
	if p := os.Getenv("MLSCALE_HELM"); p != "" {
		if isExecutable(p) {
			return p, nil
		}
		tried = append(tried, p+" ($MLSCALE_HELM)")
	}
	cache := os.Getenv("MLSCALE_CACHE")
	if cache == "" {
		if home, err := os.UserHomeDir(); err == nil {
			cache = filepath.Join(home, ".cache", "mlscale")
		}
	}
	if cache != "" {
		p := filepath.Join(cache, "bin", "helm")
		if isExecutable(p) {
			return p, nil
		}
		tried = append(tried, p)
	}
	if p, err := exec.LookPath("helm"); err == nil {
		return p, nil
	}
	tried = append(tried, "helm on PATH")
	return "", fmt.Errorf("no helm binary (tried %s): run `make deps-helm`", strings.Join(tried, ", "))
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// Run runs helm with args and returns its stdout; a failure carries stderr.
func Run(ctx context.Context, helm string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, helm, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// Keep helm's own state (repositories, cache) out of the user's home.
	tmp, err := os.MkdirTemp("", "mlscale-helm-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+tmp+"/cache", "HELM_CONFIG_HOME="+tmp+"/config", "HELM_DATA_HOME="+tmp+"/data")
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("helm %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// KubeVersion is the Kubernetes version helm template and lint render for:
// the local cluster's. (A helm built with go install assumes v1.20, below
// the chart's kubeVersion; release builds set it from their client-go.)
const KubeVersion = "v1.37.2"

// Template renders the chart as release in namespace with helm template
// (extra args: --set, -f, ...) and returns its objects in order.
func Template(ctx context.Context, helm, release, namespace string, args ...string) ([]*unstructured.Unstructured, error) {
	out, err := Run(ctx, helm, append([]string{"template", release, Dir(), "--namespace", namespace, "--kube-version", KubeVersion}, args...)...)
	if err != nil {
		return nil, err
	}
	return Decode(out)
}

// Decode splits a multi-document YAML stream into objects, skipping empty
// documents.
func Decode(stream []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(stream), 4096)
	var objs []*unstructured.Unstructured
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return objs, nil
			}
			return nil, fmt.Errorf("decoding the rendered chart (object %d): %w", len(objs)+1, err)
		}
		if t := bytes.TrimSpace(raw); len(t) == 0 || string(t) == "null" || string(t) == "{}" {
			continue
		}
		// Through Unstructured's own decoder: integers stay int64, as the
		// API server and kustomize's output have them.
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(raw); err != nil {
			return nil, fmt.Errorf("decoding the rendered chart (object %d): %w", len(objs)+1, err)
		}
		objs = append(objs, u)
	}
}
