package manifests

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// dockerfile returns the Dockerfile's instructions, continuation lines
// joined and comments dropped.
func dockerfile(t *testing.T) []string {
	t.Helper()
	f, err := os.Open("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	var cur strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if cur.Len() == 0 && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if strings.HasPrefix(line, "#") {
			continue
		}
		if s, ok := strings.CutSuffix(line, "\\"); ok {
			cur.WriteString(s)
			continue
		}
		cur.WriteString(line)
		out = append(out, cur.String())
		cur.Reset()
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDockerfileBuildsLikeMake: no engine runs here, so this pins the image's
// build step to `make build`: the Dockerfile runs `make build` itself with
// CGO_ENABLED=0, and `make build` runs go build with the flags the issue
// names. If either side changes, this fails.
func TestDockerfileBuildsLikeMake(t *testing.T) {
	ins := dockerfile(t)
	var runMake, cgoOff, modelCopied, noLocalCluster bool
	var stages []string
	for _, in := range ins {
		switch {
		case strings.HasPrefix(in, "FROM "):
			stages = append(stages, in)
		case strings.HasPrefix(in, "ENV ") && regexp.MustCompile(`\bCGO_ENABLED=0\b`).MatchString(in):
			cgoOff = true
		case strings.HasPrefix(in, "RUN "):
			if strings.Contains(in, "make build BIN=/out") {
				runMake = true
			}
			if strings.Contains(in, "rm /out/localcluster") {
				noLocalCluster = true
			}
			if strings.Contains(in, "go build") {
				t.Errorf("the Dockerfile runs go build itself (%q); it must run `make build`", in)
			}
			if m := regexp.MustCompile(`cp (\S+) /out/models/iris/model\.joblib`).FindStringSubmatch(in); m != nil {
				modelCopied = true
				if _, err := os.Stat(filepath.Join("..", m[1])); err != nil {
					t.Errorf("the demo model the image copies: %v", err)
				}
			}
		}
	}
	if !runMake || !cgoOff || !modelCopied || !noLocalCluster {
		t.Errorf("Dockerfile: runs make build = %v, sets CGO_ENABLED=0 = %v, copies the model = %v, leaves the local cluster out = %v; want all", runMake, cgoOff, modelCopied, noLocalCluster)
	}
	if len(stages) != 2 || !strings.Contains(stages[0], "golang:") || !strings.Contains(stages[1], "gcr.io/distroless/static") || !strings.HasSuffix(stages[1], ":nonroot") {
		t.Errorf("stages %q: want a golang builder and a distroless static nonroot image", stages)
	}
	final := strings.Join(ins[slicesIndex(ins, stages[len(stages)-1]):], "\n")
	for _, want := range []string{"COPY --from=build /out/ /", "USER 65532:65532",
		"org.opencontainers.image.source=", "org.opencontainers.image.version=", "org.opencontainers.image.revision=", "org.opencontainers.image.title="} {
		if !strings.Contains(final, want) {
			t.Errorf("final stage lacks %q", want)
		}
	}

	cmd := exec.Command("make", "-n", "--no-print-directory", "build", "BIN=/out", "GO=go")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make -n build: %v\n%s", err, out)
	}
	want := "go build -trimpath -ldflags='-s -w' -o /out/ ./cmd/..."
	if !strings.Contains(string(out), want) {
		t.Errorf("make -n build prints\n%s\nwant a line %q", out, want)
	}
	mk, err := os.ReadFile("../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^export CGO_ENABLED \?= 0$`).Match(mk) {
		t.Error("the Makefile no longer builds with CGO_ENABLED=0 by default")
	}
}

func slicesIndex(s []string, v string) int {
	for i := range s {
		if s[i] == v {
			return i
		}
	}
	return -1
}

// TestImageHoldsEveryCommand: every `command: [/<binary>]` in the manifests is
// a main package under cmd/, so `make build` puts it at the image root.
func TestImageHoldsEveryCommand(t *testing.T) {
	seen := map[string]bool{}
	for _, objs := range renderAll(t) {
		for _, pt := range podTemplates(t, objs) {
			for _, c := range pt.spec.Containers {
				seen[strings.TrimPrefix(c.Command[0], "/")] = true
			}
		}
	}
	for b := range seen {
		if b == "localcluster" {
			t.Errorf("manifests run /localcluster, which the image leaves out")
		}
		if _, err := os.Stat(filepath.Join("..", "cmd", b, "main.go")); err != nil {
			t.Errorf("manifests run /%s, but cmd/%s/main.go: %v", b, b, err)
		}
	}
}
