package build

import (
	"os"
	"slices"
	"testing"
)

func TestStagingModules(t *testing.T) {
	data, err := os.ReadFile("testdata/kubernetes-v1.37.2.mod")
	if err != nil {
		t.Fatal(err)
	}
	mods, err := StagingModules(data)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"k8s.io/api", "k8s.io/apiserver", "k8s.io/client-go", "k8s.io/kube-aggregator", "k8s.io/kubectl", "k8s.io/streaming"} {
		if !slices.Contains(mods, want) {
			t.Errorf("%s missing from %v", want, mods)
		}
	}
	// Replaced but not required, and not published on the proxy.
	for _, not := range []string{"k8s.io/sample-cli-plugin", "k8s.io/sample-controller", "k8s.io/klog/v2"} {
		if slices.Contains(mods, not) {
			t.Errorf("%s should not be pinned", not)
		}
	}
	if len(mods) != 31 {
		t.Errorf("%d staging modules, want 31: %v", len(mods), mods)
	}
	if _, err := StagingModules([]byte("module x\nrequire (\n")); err == nil {
		t.Error("a broken go.mod was accepted")
	}
	if _, err := StagingModules([]byte("module x\n")); err == nil {
		t.Error("a go.mod without staging modules was accepted")
	}
}
