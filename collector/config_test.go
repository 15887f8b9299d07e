package collector

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestLoadConfig(t *testing.T) {
	cfg, err := LoadConfig("testdata/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range cfg.Rules {
		names = append(names, r.Name)
	}
	if diff := cmp.Diff([]string{"errors_per_second", "inflight_requests", "request_duration_p90_seconds", "requests_per_second"}, names); diff != "" {
		t.Errorf("rules (-want +got):\n%s", diff)
	}
	o := cfg.Scrape.Options()
	if o.WarmUp != 2*time.Second || o.Interval != time.Second || o.ScrapeTimeout != 900*time.Millisecond {
		t.Errorf("options = %+v", o)
	}
	if cfg.Discovery.Port != 9000 || cfg.Discovery.Path != "/metrics" {
		t.Errorf("discovery defaults not filled: %+v", cfg.Discovery)
	}
	var b strings.Builder
	if err := cfg.Explain(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`of SeldonDeployment models/iris`,
		`errors_per_second             per-second rate of counter mlscale_requests_total{code="500"}`,
		`q0.9 of histogram mlscale_request_duration_seconds`,
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("explain output lacks %q:\n%s", want, b.String())
		}
	}
}

func TestParseConfigDefaults(t *testing.T) {
	cfg, err := ParseConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := ValidateRules(DefaultRules())
	if diff := cmp.Diff(want, cfg.Rules); diff != "" {
		t.Errorf("default rules (-want +got):\n%s", diff)
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"unknown top-level field", "scrap: {}", `config: field "scrap": unknown field`},
		{"unknown scrape field", "scrape: {intervall: 1s}", `config: scrape: field "intervall": unknown field`},
		{"bad duration", "scrape: {interval: fast}", `config: scrape: field "": time: invalid duration "fast"`},
		{"timeout over interval", "scrape: {interval: 1s, scrapeTimeout: 2s}", `config: scrape: scrapeTimeout must be in (0, interval=1s], got 2s`},
		{"unknown discovery field", "discovery: {namespace: x}", `config: discovery: field "namespace": unknown field`},
		{"misspelled rule field", "rules:\n- name: rps\n  seires: x\n  compute: rate", `config: rules[0] "rps": field "seires": unknown field`},
		{"rule field wrong type", "rules:\n- name: p\n  series: h\n  compute: quantile\n  quantile: high", `config: rules[0] "p": field "quantile": wrong type: got string`},
		{"second rule invalid", "rules:\n- {name: a, series: x, compute: rate}\n- {name: b, series: yy, compute: median}", `config: rules[1] "b": field "compute": "median" is not one of rate, mean, quantile, last`},
		{"not yaml", "rules: [", `config: not valid YAML`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.yaml))
			if err == nil {
				t.Fatalf("ParseConfig succeeded, want error %q", tc.want)
			}
			if !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("error = %q, want prefix %q", err, tc.want)
			}
		})
	}
}
