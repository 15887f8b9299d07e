//go:build tools

// Package deps pins the project's dependencies before every package imports
// them, so parallel work on separate packages never races on go.mod.
package deps

import (
	_ "github.com/HdrHistogram/hdrhistogram-go"
	_ "github.com/google/go-cmp/cmp"
	_ "github.com/grafana/grafana-foundation-sdk/go/dashboard"
	_ "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	_ "github.com/json-iterator/go"
	_ "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	_ "github.com/nlpodyssey/gopickle/pickle"
	_ "github.com/prometheus/client_golang/api"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/prometheus/client_golang/prometheus/testutil"
	_ "github.com/prometheus/common/expfmt"
	_ "github.com/prometheus/prometheus/promql/parser"
	_ "github.com/schollz/progressbar/v3"
	_ "github.com/tsenart/vegeta/v12/lib"
	_ "github.com/valyala/fastjson"
	_ "github.com/vishvananda/netlink"
	_ "golang.org/x/mod/modfile"
	_ "golang.org/x/term"
	_ "gonum.org/v1/plot"
	_ "google.golang.org/grpc"
	_ "google.golang.org/grpc/health"
	_ "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	_ "k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	_ "k8s.io/client-go/kubernetes"
	_ "k8s.io/metrics/pkg/client/custom_metrics"
	_ "k8s.io/metrics/pkg/client/external_metrics"
	_ "sigs.k8s.io/custom-metrics-apiserver/pkg/cmd"
	_ "sigs.k8s.io/kustomize/api/krusty"
	_ "sigs.k8s.io/yaml"
)
