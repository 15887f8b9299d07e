package node

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// The cases follow the kubelet's own expansion tests
// (third_party/forked/golang/expansion/expand_test.go).
func TestExpand(t *testing.T) {
	vars := map[string]string{"VAR_A": "A", "VAR_B": "B", "VAR_C": "C", "VAR_REF": "$(VAR_A)", "VAR_EMPTY": "", "POD_IP": "198.18.0.7"}
	tests := []struct{ name, in, want string }{
		{"whole string", "$(VAR_A)", "A"},
		{"start", "$(VAR_A)_", "A_"},
		{"middle", "___$(VAR_B)___", "___B___"},
		{"end", "___$(VAR_C)", "___C"},
		{"two", "$(VAR_A)$(VAR_B)", "AB"},
		{"listen flag", "--listen=$(POD_IP):9000", "--listen=198.18.0.7:9000"},
		{"not recursive", "$(VAR_REF)", "$(VAR_A)"},
		{"empty value", "x$(VAR_EMPTY)y", "xy"},
		{"undefined kept", "$(VAR_DNE)", "$(VAR_DNE)"},
		{"empty name kept", "$()", "$()"},
		{"escaped ref", "$$(VAR_B)", "$(VAR_B)"},
		{"escape then ref", "$$$(VAR_A)", "$A"},
		{"double escape", "$$$$", "$$"},
		{"single escape", "$$", "$"},
		{"unterminated", "$(VAR_A", "$(VAR_A"},
		{"unterminated then ref", "$(VAR_A$(VAR_B)", "$(VAR_A$(VAR_B)"},
		{"bare dollar word", "$VAR_A", "$VAR_A"},
		{"lone dollar", "$", "$"},
		{"trailing dollar", "foo$", "foo$"},
		{"dollar space", "$ x", "$ x"},
		{"no refs", "plain text", "plain text"},
		{"empty", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Expand(tc.in, mapFrom(vars))
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Expand(%q) (-want +got):\n%s", tc.in, diff)
			}
		})
	}
}

// FuzzExpand: any input expands without panicking, and with no variables
// defined the only change is $$ -> $.
func FuzzExpand(f *testing.F) {
	for _, s := range []string{"$(A)", "$$(A)", "$(", "$", "a$$b", "$(A$(B))", "--listen=$(POD_IP):9000"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got := Expand(in, mapFrom(map[string]string{}))
		if strings.Contains(in, "$$") {
			return
		}
		if got != in {
			t.Fatalf("Expand(%q) with no variables = %q", in, got)
		}
	})
}
