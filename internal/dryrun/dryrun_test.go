package dryrun

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func TestCRDsIn(t *testing.T) {
	const crdA = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: as.example.com}\nspec: {group: example.com}\n"
	tests := []struct {
		name, yaml string
		want       []string
		wantErr    bool
	}{
		{"CRDs only, other kinds passed over", crdA + "---\nkind: Namespace\nmetadata: {name: n}\n---\n" +
			"apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: bs.example.com}\n", []string{"as.example.com", "bs.example.com"}, false},
		{"empty documents are skipped", "---\n---\n" + crdA + "---\n# only a comment\n", []string{"as.example.com"}, false},
		{"malformed", "kind: A\n  metadata: [\n", nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "f.yaml")
			if err := os.WriteFile(p, []byte(tc.yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			defs, err := crdsIn(p)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			var got []string
			for _, d := range defs {
				var o map[string]any
				if err := json.Unmarshal(d.json, &o); err != nil || o["kind"] != "CustomResourceDefinition" {
					t.Errorf("%s: body %s is not the CRD's JSON (%v)", d.name, d.json, err)
				}
				got = append(got, d.name)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("CRDs (-want +got):\n%s", diff)
			}
		})
	}
}

// Objects of a group without a pinned CRD are reported and never sent: the
// Cluster here has no API server, so sending one would panic.
func TestDoesNotSendUnvalidatedGroups(t *testing.T) {
	cert := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
		"metadata": map[string]any{"name": "serving", "namespace": "mlscale"}}}
	rejected, notSent := (&Cluster{}).dryRunAll(context.Background(), []*unstructured.Unstructured{cert})
	if len(rejected) != 0 {
		t.Errorf("rejected: %v", rejected)
	}
	if diff := cmp.Diff([]string{"Certificate mlscale/serving"}, notSent); diff != "" {
		t.Errorf("not sent (-want +got):\n%s", diff)
	}
}
