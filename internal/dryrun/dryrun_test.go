package dryrun

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func TestDecodeFile(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       []string // kind/name
		wantErr    bool
	}{
		{"two documents", "kind: A\nmetadata: {name: a}\n---\nkind: B\nmetadata: {name: b}\n", []string{"A/a", "B/b"}, false},
		{"empty documents are skipped", "---\n---\nkind: A\nmetadata: {name: a}\n---\n# only a comment\n", []string{"A/a"}, false},
		{"malformed", "kind: A\n  metadata: [\n", nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "f.yaml")
			if err := os.WriteFile(p, []byte(tc.yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			objs, err := decodeFile(p)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			var got []string
			for _, o := range objs {
				got = append(got, o.GetKind()+"/"+o.GetName())
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("objects (-want +got):\n%s", diff)
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
