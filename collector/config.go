package collector

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// Config is the adapter's (and scaler's) configuration file.
type Config struct {
	// Scrape tunes the loop; unset fields keep NewOptions' defaults.
	Scrape ScrapeConfig `json:"scrape,omitempty"`
	// Discovery says which pods are scraped.
	Discovery DiscoveryConfig `json:"discovery,omitempty"`
	// Rules are the served metrics; empty means DefaultRules.
	Rules []Rule `json:"rules,omitempty"`
}

// ScrapeConfig is Options as written in YAML (durations as "1s").
type ScrapeConfig struct {
	Interval      metav1.Duration  `json:"interval,omitempty"`
	ScrapeTimeout metav1.Duration  `json:"scrapeTimeout,omitempty"`
	Window        metav1.Duration  `json:"window,omitempty"`
	StaleAfter    metav1.Duration  `json:"staleAfter,omitempty"`
	WarmUp        *metav1.Duration `json:"warmUp,omitempty"`
	MaxBodyBytes  int64            `json:"maxBodyBytes,omitempty"`
	Protocol      string           `json:"protocol,omitempty"`
	Concurrency   int              `json:"concurrency,omitempty"`
}

// Options returns the scrape options: the defaults overlaid with what is set.
func (s ScrapeConfig) Options() Options {
	o := NewOptions()
	if s.Interval.Duration != 0 {
		o.Interval = s.Interval.Duration
		// Keep the default timeout inside a shorter interval.
		if s.ScrapeTimeout.Duration == 0 && o.ScrapeTimeout > o.Interval {
			o.ScrapeTimeout = o.Interval * 9 / 10
		}
	}
	if s.ScrapeTimeout.Duration != 0 {
		o.ScrapeTimeout = s.ScrapeTimeout.Duration
	}
	if s.Window.Duration != 0 {
		o.Window = s.Window.Duration
	}
	if s.StaleAfter.Duration != 0 {
		o.StaleAfter = s.StaleAfter.Duration
	}
	if s.WarmUp != nil {
		o.WarmUp = s.WarmUp.Duration
	}
	if s.MaxBodyBytes != 0 {
		o.MaxBodyBytes = s.MaxBodyBytes
	}
	if s.Protocol != "" {
		o.Protocol = s.Protocol
	}
	if s.Concurrency != 0 {
		o.Concurrency = s.Concurrency
	}
	return o
}

// strict decodes JSON into v, refusing unknown fields and trailing data.
func strict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}

// fieldOf turns a JSON decoding error into the field it is about and a
// message without the decoder's Go type names.
func fieldOf(err error) (field, msg string) {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return te.Field, fmt.Sprintf("wrong type: got %s", te.Value)
	}
	s := err.Error()
	if i := strings.Index(s, "unknown field "); i >= 0 {
		f := strings.Trim(s[i+len("unknown field "):], `"`)
		return f, "unknown field"
	}
	return "", s
}

// ParseConfig parses a YAML config strictly: an unknown or mistyped field is
// an error, and a mistake in a rule names the rule and the field. The result
// is validated and has defaults filled in.
func ParseConfig(data []byte) (*Config, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("config: not valid YAML: %w", err)
	}
	var top struct {
		Scrape    json.RawMessage   `json:"scrape"`
		Discovery json.RawMessage   `json:"discovery"`
		Rules     []json.RawMessage `json:"rules"`
	}
	if string(js) != "null" {
		if err := strict(js, &top); err != nil {
			f, msg := fieldOf(err)
			return nil, fmt.Errorf("config: field %q: %s", f, msg)
		}
	}
	cfg := &Config{}
	if len(top.Scrape) > 0 && string(top.Scrape) != "null" {
		if err := strict(top.Scrape, &cfg.Scrape); err != nil {
			f, msg := fieldOf(err)
			return nil, fmt.Errorf("config: scrape: field %q: %s", f, msg)
		}
	}
	if errs := cfg.Scrape.Options().Validate(); len(errs) > 0 {
		return nil, fmt.Errorf("config: scrape: %w", errors.Join(errs...))
	}
	if len(top.Discovery) > 0 && string(top.Discovery) != "null" {
		if err := strict(top.Discovery, &cfg.Discovery); err != nil {
			f, msg := fieldOf(err)
			return nil, fmt.Errorf("config: discovery: field %q: %s", f, msg)
		}
	}
	for i, raw := range top.Rules {
		var r Rule
		if err := strict(raw, &r); err != nil {
			var named struct {
				Name string `json:"name"`
			}
			_ = json.Unmarshal(raw, &named) // best effort, for the message only
			f, msg := fieldOf(err)
			return nil, fmt.Errorf("config: %w", &RuleError{Index: i, Rule: named.Name, Field: f, Msg: msg})
		}
		cfg.Rules = append(cfg.Rules, r)
	}
	if len(cfg.Rules) == 0 {
		cfg.Rules = DefaultRules()
	}
	rules, err := ValidateRules(cfg.Rules)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cfg.Rules = rules
	cfg.Discovery.setDefaults()
	return cfg, nil
}

// LoadConfig reads and parses path; an empty path gives the defaults.
func LoadConfig(path string) (*Config, error) {
	if path == "" {
		return ParseConfig(nil)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// Explain writes what cfg serves and where it scrapes, for `adapter explain`.
func (cfg *Config) Explain(w io.Writer) error {
	o := cfg.Scrape.Options()
	d := cfg.Discovery
	var b strings.Builder
	fmt.Fprintf(&b, "Scrape: every %v (timeout %v, protocol %s), window %v, stale after %v, warm-up %v\n",
		o.Interval, o.ScrapeTimeout, o.Protocol, o.Window, o.StaleAfter, o.WarmUp)
	ns := "all namespaces"
	if len(d.Namespaces) > 0 {
		ns = "namespaces " + strings.Join(d.Namespaces, ", ")
	}
	fmt.Fprintf(&b, "Pods: ready pods in %s", ns)
	var picks []string
	if d.Selector != "" {
		picks = append(picks, fmt.Sprintf("matching %q", d.Selector))
	}
	for _, wl := range d.Workloads {
		picks = append(picks, fmt.Sprintf("of %s %s/%s", wl.Kind, wl.Namespace, wl.Name))
	}
	if len(picks) == 0 {
		picks = append(picks, fmt.Sprintf("annotated %s: \"true\"", AnnotationScrape))
	}
	fmt.Fprintf(&b, " %s\n", strings.Join(picks, " or "))
	fmt.Fprintf(&b, "Endpoint: %s://<pod IP>:%d%s (pod annotations %s, %s, %s override)\n\n",
		d.Scheme, d.Port, d.Path, AnnotationScheme, AnnotationPort, AnnotationPath)
	if _, err := io.WriteString(w, b.String()); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "METRIC\tCOMPUTATION")
	for _, r := range cfg.Rules {
		fmt.Fprintf(tw, "%s\t%s\n", r.Name, r.Describe())
	}
	return tw.Flush()
}
