package main

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Bad flags and configs stop the scaler before it touches the cluster, with
// a message naming what is wrong.
func TestRunRejectsBadConfiguration(t *testing.T) {
	badConfig := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(badConfig, []byte("scrape:\n  intervall: 1s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"cert without key", []string{"--tls-cert-file=tls.crt"}, "tls-cert-file and tls-key-file"},
		{"client CA without TLS", []string{"--client-ca-file=ca.crt"}, "client-ca-file"},
		{"zero poll interval", []string{"--poll-interval=0s"}, "poll-interval"},
		{"empty address", []string{"--address="}, "address"},
		{"unknown flag", []string{"--adress=:6000"}, "adress"},
		{"missing config", []string{"--config=/nonexistent/adapter.yaml"}, "reading config"},
		{"misspelt config field", []string{"--config=" + badConfig}, "intervall"},
		{"stray argument", []string{"--address=:6000", "serve"}, "unexpected arguments"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := run(tc.args)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("run(%q) = %v, want an error containing %q", tc.args, err, tc.want)
			}
		})
	}
	if err := run([]string{"--help"}); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("--help: %v, want flag.ErrHelp", err)
	}
}
