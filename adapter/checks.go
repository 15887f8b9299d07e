package adapter

import (
	"fmt"
	"net/http"

	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/apiserver/pkg/server/healthz"
)

// LoopState is the scrape loop's state; the collector implements it.
type LoopState interface {
	// Healthy fails when the loop is stuck.
	Healthy() error
	// Ready fails until discovery has synced and a window of data exists.
	Ready() error
}

// AddChecks puts the loop's state behind the server's probes: a stuck loop
// fails /healthz and /livez (restart me), a loop without a full window yet
// fails /readyz (do not send me the HPA's questions yet).
func AddChecks(s *genericapiserver.GenericAPIServer, loop LoopState) error {
	live := healthz.NamedCheck("scrape-loop", func(*http.Request) error { return loop.Healthy() })
	ready := healthz.NamedCheck("scrape-window", func(*http.Request) error { return loop.Ready() })
	if err := s.AddHealthChecks(live); err != nil {
		return fmt.Errorf("adding health check: %w", err)
	}
	if err := s.AddReadyzChecks(ready); err != nil {
		return fmt.Errorf("adding readiness check: %w", err)
	}
	return nil
}
