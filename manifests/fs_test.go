package manifests

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/mlscale/mlscale/internal/certgen"
	"github.com/mlscale/mlscale/manifests/crds"
)

// memRoot is where the manifests live in the in-memory file system.
const memRoot = "/manifests"

var (
	renderOnce sync.Once
	rendered   map[string][]*unstructured.Unstructured
	renderErr  error
)

// renderAll renders every overlay once per test binary, from an in-memory
// copy of this directory with freshly generated certificates in place of
// `make certs` output, so the tests neither need nor touch files on disk.
func renderAll(t *testing.T) map[string][]*unstructured.Unstructured {
	t.Helper()
	renderOnce.Do(func() {
		var fsys filesys.FileSystem
		fsys, renderErr = memFS(t.TempDir())
		if renderErr != nil {
			return
		}
		var names []string
		names, renderErr = Overlays(".")
		if renderErr != nil {
			return
		}
		rendered = map[string][]*unstructured.Unstructured{}
		for _, n := range names {
			objs, err := Build(fsys, filepath.Join(memRoot, "overlays", n))
			if err != nil {
				renderErr = err
				return
			}
			rendered[n] = objs
		}
	})
	if renderErr != nil {
		t.Fatal(renderErr)
	}
	return rendered
}

func memFS(certDir string) (filesys.FileSystem, error) {
	fsys := filesys.MakeFsInMemory()
	gen := filepath.Join("components", "certs", "generated")
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p == gen {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".yaml") && !strings.HasSuffix(p, ".json") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return fsys.WriteFile(filepath.Join(memRoot, p), b)
	})
	if err != nil {
		return nil, err
	}
	res, err := certgen.Generate(certgen.Options{Dir: certDir})
	if err != nil {
		return nil, err
	}
	for _, f := range res.Files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		if err := fsys.WriteFile(filepath.Join(memRoot, gen, filepath.Base(f)), b); err != nil {
			return nil, err
		}
	}
	return fsys, nil
}

// crdsDir writes the CRDs the manifests are checked against (manifests/crds:
// each project's from its pinned Go module, Seldon's schema from the
// repository) into a fresh directory of t and returns it.
func crdsDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := crds.Write(ctx, dir); err != nil {
		t.Fatalf("fetching the CRDs: %v", err)
	}
	return dir
}
