// Package node is the local cluster's node agent: it registers a Node and
// runs the pods bound to it as local processes, the way the kubelet runs
// containers: environment and $(VAR) expansion, volumes, probes, status and
// conditions, restarts, graceful deletion, and the resource metrics endpoint
// metrics-server scrapes.
package node

import "strings"

// Expand replaces $(VAR) references in input using mapping, with the
// kubelet's rules (k8s.io/kubernetes/third_party/forked/golang/expansion):
// `$$` is an escaped `$`, a reference to an undefined variable and an
// unterminated `$(` are left as written, and any other `$` is literal.
func Expand(input string, mapping func(string) (string, bool)) string {
	var buf strings.Builder
	checkpoint := 0
	for cursor := 0; cursor < len(input); cursor++ {
		if input[cursor] != '$' || cursor+1 >= len(input) {
			continue
		}
		buf.WriteString(input[checkpoint:cursor])
		read, isVar, advance := readVariableName(input[cursor+1:])
		if isVar {
			if v, ok := mapping(read); ok {
				buf.WriteString(v)
			} else {
				buf.WriteString("$(" + read + ")")
			}
		} else {
			buf.WriteString(read)
		}
		cursor += advance
		checkpoint = cursor + 1
	}
	buf.WriteString(input[checkpoint:])
	return buf.String()
}

// readVariableName reads what follows a `$`: the variable name, whether it
// is one, and how many bytes were consumed.
func readVariableName(input string) (string, bool, int) {
	switch input[0] {
	case '$':
		return "$", false, 1
	case '(':
		for i := 1; i < len(input); i++ {
			if input[i] == ')' {
				return input[1:i], true, i + 1
			}
		}
		// Unterminated: the kubelet keeps "$(" and reads on.
		return "$(", false, 1
	default:
		return "$" + input[0:1], false, 1
	}
}

// mapFrom looks names up in maps, first to last.
func mapFrom(maps ...map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		for _, m := range maps {
			if v, ok := m[name]; ok {
				return v, true
			}
		}
		return "", false
	}
}
