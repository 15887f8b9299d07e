package node

import "time"

// maxBackoff is the kubelet's cap on the restart back-off
// (MaxContainerBackOff).
const maxBackoff = 5 * time.Minute

// nextBackoff is the delay before restarting a container that exited after
// running for ran, given the delay before its previous restart (0 for none),
// as the kubelet computes it (flowcontrol.Backoff keyed per container): the
// first exit waits base; each further exit doubles the previous delay, up to
// maxBackoff; a run longer than twice maxBackoff counts as stable and starts
// again from base.
//
// It doubles the previous delay, not base once per restart ever made: a
// container that crash-looped four times at start-up and then ran for an
// hour must not wait five minutes after its next two exits where the kubelet
// waits 10 and then 20 seconds (the agent used 10 s x 2^restarts, reset only
// for the one exit after a long run).
func nextBackoff(prev, base, ran time.Duration) time.Duration {
	if prev <= 0 || ran > 2*maxBackoff {
		return base
	}
	return min(2*prev, maxBackoff)
}
