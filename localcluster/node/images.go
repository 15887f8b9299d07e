package node

import (
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// ImageRule maps images whose name starts with Prefix to local programs:
// Binary is the image's entrypoint; Dir holds the image's programs by base
// name, so `command: [/modelserver]` runs Dir/modelserver.
type ImageRule struct {
	Prefix string
	Binary string
	Dir    string
}

// ImageMap resolves a container to the local program and arguments that
// stand for it, the longest matching prefix winning.
type ImageMap []ImageRule

// ParseImageRule parses PREFIX=PATH; a PATH ending in "/" is a directory.
func ParseImageRule(s string) (ImageRule, error) {
	prefix, p, ok := strings.Cut(s, "=")
	if !ok || prefix == "" || p == "" {
		return ImageRule{}, fmt.Errorf("image rule %q: want IMAGE-PREFIX=PATH (PATH ending in / for a directory of programs)", s)
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return ImageRule{}, fmt.Errorf("image rule %q: %w", s, err)
	}
	if strings.HasSuffix(p, "/") {
		return ImageRule{Prefix: prefix, Dir: abs}, nil
	}
	return ImageRule{Prefix: prefix, Binary: abs}, nil
}

// Resolve returns the program and its arguments (argv[1:]) for c, with
// command and args already expanded by the caller. Like a container
// runtime: command replaces the entrypoint, args follow it.
func (m ImageMap) Resolve(c *corev1.Container, command, args []string) (string, []string, error) {
	rules := append(ImageMap(nil), m...)
	sort.SliceStable(rules, func(i, j int) bool { return len(rules[i].Prefix) > len(rules[j].Prefix) })
	var rule *ImageRule
	for i := range rules {
		if strings.HasPrefix(c.Image, rules[i].Prefix) {
			rule = &rules[i]
			break
		}
	}
	if rule == nil {
		return "", nil, fmt.Errorf("image %q is not mapped to a local program (add --image PREFIX=PATH)", c.Image)
	}
	if len(command) == 0 {
		bin := rule.Binary
		if bin == "" {
			bin = filepath.Join(rule.Dir, imageBase(c.Image))
		}
		if _, err := os.Stat(bin); err != nil {
			return "", nil, fmt.Errorf("image %q: entrypoint: %w", c.Image, err)
		}
		return bin, args, nil
	}
	name := command[0]
	var bin string
	switch {
	case rule.Dir != "":
		bin = filepath.Join(rule.Dir, path.Base(name))
		if _, err := os.Stat(bin); err != nil {
			return "", nil, fmt.Errorf("image %q: command %q: %w (is `make build` done?)", c.Image, name, err)
		}
	case path.Base(name) == path.Base(rule.Binary) || name == rule.Binary:
		bin = rule.Binary
	default:
		// A tool every image has (sh, sleep): the host's.
		p, err := exec.LookPath(path.Base(name))
		if err != nil {
			return "", nil, fmt.Errorf("image %q: command %q is neither the image's program nor on PATH", c.Image, name)
		}
		bin = p
	}
	return bin, append(append([]string(nil), command[1:]...), args...), nil
}

// imageBase is the last path element of an image reference, without tag or
// digest: ghcr.io/mlscale/modelserver:v1 -> modelserver.
func imageBase(image string) string {
	if i := strings.Index(image, "@"); i >= 0 {
		image = image[:i]
	}
	base := path.Base(image)
	if i := strings.Index(base, ":"); i >= 0 {
		base = base[:i]
	}
	return base
}
