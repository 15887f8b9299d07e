package scaler

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"
)

// Config configures a Server. The flag-backed fields come from AddFlags; the
// rest are wired by the embedding process.
type Config struct {
	// Address is the gRPC listen address (KEDA's scalerAddress points here).
	Address string
	// MetricsAddress serves the scaler's own /metrics; "" disables it (when
	// embedded, the host process serves its own registry instead).
	MetricsAddress string
	// TLSCertFile and TLSKeyFile enable TLS (KEDA: enableTLS or caCert).
	// ClientCAFile additionally requires client certificates signed by that CA
	// (KEDA: tlsClientCert/tlsClientKey in the TriggerAuthentication).
	// The files are re-read when they change, so rotated Secrets apply
	// without a restart.
	TLSCertFile, TLSKeyFile, ClientCAFile string
	// PollInterval is how often open StreamIsActive streams re-read the
	// collector's window. Keep it at or below the collector's scrape interval.
	PollInterval time.Duration
	// ShutdownTimeout bounds the graceful stop in Serve.
	ShutdownTimeout time.Duration
	// ActivatorService is the activator's Service, "namespace/name": the
	// scaler watches the demand stream of each of its replicas
	// (activator/api), and requests held or in flight there for a
	// trigger's wake Service make it active at once, which wakes a
	// workload at zero pods. Needs Kube. "" disables it.
	ActivatorService string
	// Kube is the client the activator's replicas are discovered with.
	Kube kubernetes.Interface

	// Registerer receives the scaler's metrics and Gatherer is what
	// /metrics serves; both a new registry when nil. Embedded in the adapter,
	// pass its Registerer (legacyregistry) and leave MetricsAddress empty.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	// Logger; slog.Default() when nil.
	Logger *slog.Logger
	// Pods, optional: see PodCounter.
	Pods PodCounter
	// Pending, optional, overrides the watcher built from
	// ActivatorService; its owner runs it.
	Pending PendingSource
	// Healthy and Ready, optional, are the collector's checks (its loop is
	// not stuck; its target list and windows are complete). Serve exposes
	// them as /healthz and /readyz on the metrics port, for kubelet probes
	// that cannot speak mutual TLS, and Ready drives the gRPC health status.
	Healthy, Ready func() error
}

// NewConfig returns the defaults.
func NewConfig() Config {
	c := Config{}
	c.defaults()
	c.Address = ":6000"
	c.MetricsAddress = ":6001"
	return c
}

func (c *Config) defaults() {
	if c.PollInterval <= 0 {
		// A quarter of the collector's default 1 s scrape interval: the
		// push delay is then dominated by the scrape, and 100 streams
		// polling at 4 Hz cost microseconds each.
		c.PollInterval = 250 * time.Millisecond
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 10 * time.Second
	}
	if c.Registerer == nil && c.Gatherer == nil {
		r := prometheus.NewRegistry()
		c.Registerer, c.Gatherer = r, r
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// AddFlags binds the flag-backed fields. prefix ("" for cmd/scaler,
// "scaler-" inside the adapter) keeps the names apart from the host's.
func (c *Config) AddFlags(fs *flag.FlagSet, prefix string) {
	fs.StringVar(&c.Address, prefix+"address", c.Address, "gRPC listen address of the KEDA external scaler")
	fs.StringVar(&c.MetricsAddress, prefix+"metrics-address", c.MetricsAddress, "listen address of the scaler's own /metrics (empty: off)")
	fs.StringVar(&c.TLSCertFile, prefix+"tls-cert-file", c.TLSCertFile, "PEM serving certificate; enables TLS (with --"+prefix+"tls-key-file)")
	fs.StringVar(&c.TLSKeyFile, prefix+"tls-key-file", c.TLSKeyFile, "PEM private key of --"+prefix+"tls-cert-file")
	fs.StringVar(&c.ClientCAFile, prefix+"client-ca-file", c.ClientCAFile, "PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS)")
	fs.DurationVar(&c.PollInterval, prefix+"poll-interval", c.PollInterval, "how often StreamIsActive re-reads the collector (at most the scrape interval)")
	fs.DurationVar(&c.ShutdownTimeout, prefix+"shutdown-timeout", c.ShutdownTimeout, "graceful stop timeout")
	fs.StringVar(&c.ActivatorService, prefix+"activator-service", c.ActivatorService, "the activator's Service, namespace/name (e.g. mlscale/mlscale-activator): requests held or in flight there for a trigger's wakeServiceName make it active at once, waking workloads at zero pods (empty: off)")
}

// Validate reports every problem at once.
func (c *Config) Validate() []error {
	var errs []error
	if c.Address == "" {
		errs = append(errs, errors.New("address: must not be empty"))
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		errs = append(errs, errors.New("tls-cert-file and tls-key-file: give both or neither"))
	}
	if c.ClientCAFile != "" && c.TLSCertFile == "" {
		errs = append(errs, errors.New("client-ca-file: mutual TLS needs tls-cert-file and tls-key-file"))
	}
	if c.PollInterval <= 0 {
		errs = append(errs, fmt.Errorf("poll-interval: must be positive, got %v", c.PollInterval))
	}
	if c.ShutdownTimeout <= 0 {
		errs = append(errs, fmt.Errorf("shutdown-timeout: must be positive, got %v", c.ShutdownTimeout))
	}
	if c.ActivatorService != "" {
		if _, _, err := splitService(c.ActivatorService); err != nil {
			errs = append(errs, err)
		}
	}
	if c.MetricsAddress != "" && (c.Registerer == nil) != (c.Gatherer == nil) {
		errs = append(errs, errors.New("metrics-address: serving /metrics needs both Registerer and Gatherer (or neither)"))
	}
	return errs
}
