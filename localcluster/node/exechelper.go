package node

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"

	"github.com/mlscale/mlscale/internal/cgroup"
	"golang.org/x/sys/unix"
)

// helperArg is argv[1] of the re-executed node agent that sets up a
// container's mounts. A pod's volumes must appear at their mountPaths (the
// service-account token at /var/run/secrets/kubernetes.io/serviceaccount is
// what rest.InClusterConfig reads), without touching the host's view of
// those paths, and different pods mount different things at the same path.
// So each container gets a private mount namespace (CLONE_NEWNS on the
// child), in which this helper bind-mounts the volumes and then execs the
// program: same pid, same process group, no extra process.
const helperArg = "__mlscale_container_exec"

// Mount is one bind mount inside the container's namespace.
type Mount struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"readOnly,omitempty"`
}

type execSpec struct {
	Mounts []Mount `json:"mounts"`
	// Cgroups are the cgroup.procs files of the container's group, one per
	// hierarchy, joined before anything else.
	Cgroups []string `json:"cgroups,omitempty"`
	Path    string   `json:"path"`
	Args    []string `json:"args"`
}

// MaybeRunHelper runs the container helper and never returns if this process
// was started as one; a main (or TestMain) using the agent calls it first.
func MaybeRunHelper() {
	if len(os.Args) < 3 || os.Args[1] != helperArg {
		return
	}
	var spec execSpec
	if err := json.Unmarshal([]byte(os.Args[2]), &spec); err != nil {
		fmt.Fprintf(os.Stderr, "container helper: bad spec: %v\n", err)
		os.Exit(127)
	}
	if err := cgroup.Join(spec.Cgroups); err != nil {
		fmt.Fprintf(os.Stderr, "container helper: %v\n", err)
		os.Exit(127)
	}
	// The program is opened before anything is mounted: a volume mounted
	// over a parent of its path (an emptyDir at /tmp, say) would hide it.
	prog, err := os.Open(spec.Path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "container helper: program: %v\n", err)
		os.Exit(127)
	}
	if err := setupMounts(spec.Mounts); err != nil {
		fmt.Fprintf(os.Stderr, "container helper: %v\n", err)
		os.Exit(127)
	}
	// Executing /proc/self/fd/N runs the file opened above whatever is
	// mounted now; argv[0] stays the program's path, as a runtime sets it.
	err = syscall.Exec(fmt.Sprintf("/proc/self/fd/%d", prog.Fd()), append([]string{spec.Path}, spec.Args...), os.Environ())
	fmt.Fprintf(os.Stderr, "container helper: exec %s: %v\n", spec.Path, err)
	os.Exit(127)
}

func setupMounts(mounts []Mount) error {
	// Nothing mounted here may propagate back to the host.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making / private: %w", err)
	}
	// Every source is opened before the first mount, since a mount can hide
	// the sources under it (an emptyDir mounted at /tmp hides a state
	// directory in /tmp), and mounts go shallowest target first, as the
	// kubelet orders them, so /a is mounted before /a/b.
	mounts = slices.Clone(mounts)
	sort.SliceStable(mounts, func(i, j int) bool {
		return strings.Count(filepath.Clean(mounts[i].Target), "/") < strings.Count(filepath.Clean(mounts[j].Target), "/")
	})
	srcs := make([]*os.File, len(mounts))
	for i, m := range mounts {
		f, err := os.OpenFile(m.Source, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("volume source: %w", err)
		}
		srcs[i] = f
	}
	defer func() {
		for _, f := range srcs {
			f.Close()
		}
	}()
	for i, m := range mounts {
		st, err := srcs[i].Stat()
		if err != nil {
			return fmt.Errorf("volume source %s: %w", m.Source, err)
		}
		source := fmt.Sprintf("/proc/self/fd/%d", srcs[i].Fd())
		if st.IsDir() {
			if err := os.MkdirAll(m.Target, 0o755); err != nil {
				return fmt.Errorf("creating mount point %s: %w", m.Target, err)
			}
		} else {
			if err := os.MkdirAll(filepath.Dir(m.Target), 0o755); err != nil {
				return fmt.Errorf("creating mount point %s: %w", m.Target, err)
			}
			if f, err := os.OpenFile(m.Target, os.O_CREATE|os.O_RDONLY, 0o644); err == nil {
				f.Close()
			}
		}
		if err := unix.Mount(source, m.Target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind-mounting %s at %s: %w", m.Source, m.Target, err)
		}
		if m.ReadOnly {
			if err := unix.Mount("", m.Target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_REC, ""); err != nil {
				return fmt.Errorf("making %s read-only: %w", m.Target, err)
			}
		}
	}
	return nil
}
