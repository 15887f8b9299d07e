package collector

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"
)

// NewScraping wires a Collector to the Discovery that feeds it, as cfg says:
// the one set-up the adapter and the standalone scaler share. The collector
// reports ready only once discovery has synced. start runs discovery and the
// scrape loop until ctx ends.
func NewScraping(client kubernetes.Interface, cfg *Config, reg prometheus.Registerer) (col *Collector, start func(context.Context), err error) {
	col, err = New(cfg.Scrape.Options(), cfg.Rules, reg)
	if err != nil {
		return nil, nil, err
	}
	disc, err := NewDiscovery(client, cfg.Discovery, col)
	if err != nil {
		return nil, nil, err
	}
	col.SetSynced(disc.HasSynced)
	return col, func(ctx context.Context) {
		disc.Start(ctx)
		go col.Run(ctx)
	}, nil
}
