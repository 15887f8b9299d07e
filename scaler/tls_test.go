package scaler

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/mlscale/mlscale/internal/certgen"
)

// kedaClientTLS builds the client side as KEDA's util.NewTLSConfig does from
// a TriggerAuthentication: caCert as RootCAs, tlsClientCert/tlsClientKey as
// the client certificate when both are given.
func kedaClientTLS(t *testing.T, caCert, clientCert, clientKey string) credentials.TransportCredentials {
	t.Helper()
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if clientCert != "" {
		pair, err := tls.LoadX509KeyPair(clientCert, clientKey)
		if err != nil {
			t.Fatal(err)
		}
		c.Certificates = []tls.Certificate{pair}
	}
	if caCert != "" {
		pem, err := os.ReadFile(caCert)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			t.Fatal("no CA in " + caCert)
		}
		c.RootCAs = pool
	}
	return credentials.NewTLS(c)
}

func certs(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if _, err := certgen.Generate(certgen.Options{Dir: dir, Validity: time.Hour}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// call makes one real RPC and one health check; both must agree.
func call(t *testing.T, addr string, creds credentials.TransportCredentials) error {
	t.Helper()
	conn := dial(t, addr, creds)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := pb.NewExternalScalerClient(conn).GetMetricSpec(ctx,
		ref(md("deploymentName=iris", "metricName=requests_per_second", "targetValue=5")))
	_, herr := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: ServiceName})
	if (err == nil) != (herr == nil) {
		t.Fatalf("GetMetricSpec said %v but health said %v", err, herr)
	}
	return err
}

func TestTLS(t *testing.T) {
	ours, foreign := certs(t), certs(t)
	f := func(dir, name string) string { return filepath.Join(dir, name) }
	tlsOnly := serve(t, world(), Config{TLSCertFile: f(ours, "scaler.crt"), TLSKeyFile: f(ours, "scaler.key")})
	mtls := serve(t, world(), Config{TLSCertFile: f(ours, "scaler.crt"), TLSKeyFile: f(ours, "scaler.key"), ClientCAFile: f(ours, "ca.crt")})

	tests := []struct {
		name   string
		addr   string
		creds  credentials.TransportCredentials
		wantOK bool
	}{
		{"TLS: KEDA with caCert", tlsOnly.addr, kedaClientTLS(t, f(ours, "ca.crt"), "", ""), true},
		{"TLS: plaintext client refused", tlsOnly.addr, insecure.NewCredentials(), false},
		{"TLS: client trusting another CA refuses us", tlsOnly.addr, kedaClientTLS(t, f(foreign, "ca.crt"), "", ""), false},
		{"mTLS: KEDA with caCert and client cert", mtls.addr, kedaClientTLS(t, f(ours, "ca.crt"), f(ours, "keda-client.crt"), f(ours, "keda-client.key")), true},
		{"mTLS: client without a certificate refused", mtls.addr, kedaClientTLS(t, f(ours, "ca.crt"), "", ""), false},
		{"mTLS: client certificate from another CA refused", mtls.addr, kedaClientTLS(t, f(ours, "ca.crt"), f(foreign, "keda-client.crt"), f(foreign, "keda-client.key")), false},
		{"mTLS: a serving certificate is no client certificate", mtls.addr, kedaClientTLS(t, f(ours, "ca.crt"), f(ours, "adapter.crt"), f(ours, "adapter.key")), false},
		{"mTLS: plaintext client refused", mtls.addr, insecure.NewCredentials(), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := call(t, tc.addr, tc.creds)
			switch {
			case tc.wantOK && err != nil:
				t.Errorf("call failed: %v", err)
			case !tc.wantOK && err == nil:
				t.Errorf("call succeeded, want it refused")
			case !tc.wantOK && status.Code(err) != codes.Unavailable:
				t.Errorf("refused with %v, want Unavailable (handshake failure)", err)
			}
		})
	}
}

// A rotated Secret (new CA, new certificates) applies without a restart.
func TestTLSReload(t *testing.T) {
	dir := certs(t)
	f := func(name string) string { return filepath.Join(dir, name) }
	ts := serve(t, world(), Config{TLSCertFile: f("scaler.crt"), TLSKeyFile: f("scaler.key"), ClientCAFile: f("ca.crt")})
	keep := t.TempDir() // the pre-rotation client material
	for _, n := range []string{"ca.crt", "keda-client.crt", "keda-client.key"} {
		b, err := os.ReadFile(f(n))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(keep, n), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old := func() credentials.TransportCredentials {
		return kedaClientTLS(t, filepath.Join(keep, "ca.crt"), filepath.Join(keep, "keda-client.crt"), filepath.Join(keep, "keda-client.key"))
	}
	if err := call(t, ts.addr, old()); err != nil {
		t.Fatalf("before rotation: %v", err)
	}
	if _, err := certgen.Generate(certgen.Options{Dir: dir, Validity: time.Hour, Force: true}); err != nil {
		t.Fatal(err)
	}
	// The files are re-checked at most once a second.
	time.Sleep(1100 * time.Millisecond)
	if err := call(t, ts.addr, kedaClientTLS(t, f("ca.crt"), f("keda-client.crt"), f("keda-client.key"))); err != nil {
		t.Errorf("new material after rotation: %v", err)
	}
	if err := call(t, ts.addr, old()); err == nil {
		t.Errorf("old material after rotation still accepted")
	}
}

func TestServerTLSConfigErrors(t *testing.T) {
	dir := certs(t)
	f := func(name string) string { return filepath.Join(dir, name) }
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name          string
		cert, key, ca string
	}{
		{"missing cert", f("nope.crt"), f("scaler.key"), ""},
		{"key of another cert", f("scaler.crt"), f("adapter.key"), ""},
		{"missing client CA", f("scaler.crt"), f("scaler.key"), f("nope.crt")},
		{"client CA without PEM", f("scaler.crt"), f("scaler.key"), garbage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ServerTLSConfig(tc.cert, tc.key, tc.ca, nil); err == nil {
				t.Error("no error")
			}
		})
	}
}
