package certgen

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestGenerateWritesAVerifiableSet(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "generated")
	res, err := Generate(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if res.Kept {
		t.Fatal("Kept = true for an empty directory")
	}
	want := []string{"adapter.crt", "adapter.key", "ca.crt", "ca.key", "keda-client.crt", "keda-client.key", "scaler.crt", "scaler.key"}
	var got []string
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		got = append(got, e.Name())
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(e.Name(), ".key") && info.Mode().Perm() != 0o600 {
			t.Errorf("%s mode = %v, want 0600", e.Name(), info.Mode().Perm())
		}
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("files (-want +got):\n%s", d)
	}

	ca, err := ReadCert(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	for _, tc := range []struct {
		leaf  string
		name  string
		usage x509.ExtKeyUsage
		ok    bool
	}{
		{"adapter", "mlscale-adapter.mlscale.svc", x509.ExtKeyUsageServerAuth, true},
		{"adapter", "mlscale-adapter.mlscale.svc.cluster.local", x509.ExtKeyUsageServerAuth, true},
		{"adapter", "mlscale-scaler.mlscale.svc", x509.ExtKeyUsageServerAuth, false},
		{"adapter", "", x509.ExtKeyUsageClientAuth, false},
		{"scaler", "mlscale-scaler.mlscale.svc.cluster.local", x509.ExtKeyUsageServerAuth, true},
		{"keda-client", "", x509.ExtKeyUsageClientAuth, true},
		{"keda-client", "", x509.ExtKeyUsageServerAuth, false},
	} {
		t.Run(tc.leaf+"/"+tc.name, func(t *testing.T) {
			c, err := ReadCert(filepath.Join(dir, tc.leaf+".crt"))
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Verify(x509.VerifyOptions{Roots: pool, DNSName: tc.name, KeyUsages: []x509.ExtKeyUsage{tc.usage}})
			if (err == nil) != tc.ok {
				t.Errorf("Verify(%q, %v) error = %v, want ok=%v", tc.name, tc.usage, err, tc.ok)
			}
		})
	}
}

// TestMutualTLSHandshake uses the files the way the scaler and KEDA do: the
// scaler serves its certificate and demands a client certificate signed by
// the CA; KEDA dials the Service name with its client certificate.
func TestMutualTLSHandshake(t *testing.T) {
	dir := t.TempDir()
	if _, err := Generate(Options{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(caPEM)
	serverCert, err := tls.LoadX509KeyPair(filepath.Join(dir, "scaler.crt"), filepath.Join(dir, "scaler.key"))
	if err != nil {
		t.Fatal(err)
	}
	clientCert, err := tls.LoadX509KeyPair(filepath.Join(dir, "keda-client.crt"), filepath.Join(dir, "keda-client.key"))
	if err != nil {
		t.Fatal(err)
	}
	wrongClient, err := tls.LoadX509KeyPair(filepath.Join(dir, "adapter.crt"), filepath.Join(dir, "adapter.key"))
	if err != nil {
		t.Fatal(err)
	}
	lis, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{serverCert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS13,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if err := c.(*tls.Conn).Handshake(); err == nil {
					c.Write([]byte("ok"))
				}
			}()
		}
	}()
	for _, tc := range []struct {
		name       string
		serverName string
		certs      []tls.Certificate
		ok         bool
	}{
		{"keda client to service name", "mlscale-scaler.mlscale.svc.cluster.local", []tls.Certificate{clientCert}, true},
		{"no client certificate", "mlscale-scaler.mlscale.svc.cluster.local", nil, false},
		{"server certificate as client", "mlscale-scaler.mlscale.svc.cluster.local", []tls.Certificate{wrongClient}, false},
		{"wrong service name", "mlscale-adapter.mlscale.svc", []tls.Certificate{clientCert}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &net.Dialer{Timeout: 5 * time.Second}
			c, err := tls.DialWithDialer(d, "tcp", lis.Addr().String(), &tls.Config{
				RootCAs: pool, ServerName: tc.serverName, Certificates: tc.certs, MinVersion: tls.VersionTLS13,
			})
			var got []byte
			if err == nil {
				c.SetDeadline(time.Now().Add(5 * time.Second))
				// With TLS 1.3 the server's verdict on the client certificate
				// arrives with the first read.
				got, err = io.ReadAll(c)
				c.Close()
			}
			if ok := err == nil && string(got) == "ok"; ok != tc.ok {
				t.Errorf("handshake ok = %v (err %v, read %q), want %v", ok, err, got, tc.ok)
			}
		})
	}
}

func TestGenerateKeepsAValidSetAndReplacesAnExpiringOne(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	if _, err := Generate(Options{Dir: dir, Validity: 100 * 24 * time.Hour, Now: now}); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(filepath.Join(dir, "adapter.crt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		opts     Options
		wantKept bool
	}{
		{"rerun keeps", Options{Dir: dir, Validity: 100 * 24 * time.Hour, Now: now.Add(24 * time.Hour)}, true},
		// 80 days on, 20 days are left: less than a quarter of the validity.
		{"expiring is replaced", Options{Dir: dir, Validity: 100 * 24 * time.Hour, Now: now.Add(80 * 24 * time.Hour)}, false},
		{"force replaces", Options{Dir: dir, Validity: 100 * 24 * time.Hour, Now: now, Force: true}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Generate(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			after, err := os.ReadFile(filepath.Join(dir, "adapter.crt"))
			if err != nil {
				t.Fatal(err)
			}
			if res.Kept != tc.wantKept || (string(after) == string(before)) != tc.wantKept {
				t.Errorf("Kept = %v, unchanged = %v; want both %v", res.Kept, string(after) == string(before), tc.wantKept)
			}
			before = after
		})
	}
}

func TestGenerateReplacesATamperedSet(t *testing.T) {
	dir := t.TempDir()
	if _, err := Generate(Options{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	// A leaf from another CA must not pass as part of the set.
	other := t.TempDir()
	if _, err := Generate(Options{Dir: other}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(other, "scaler.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "scaler.crt"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := Generate(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if res.Kept {
		t.Error("a set with a foreign leaf was kept")
	}
}

func TestGenerateNeedsADirectory(t *testing.T) {
	_, err := Generate(Options{})
	if err == nil || !strings.Contains(err.Error(), "no output directory") {
		t.Errorf("err = %v, want one about the missing directory", err)
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Generate(Options{Dir: filepath.Join(file, "sub")}); err == nil || errors.Is(err, nil) {
		t.Errorf("Generate under a file: err = %v, want an error", err)
	}
}
