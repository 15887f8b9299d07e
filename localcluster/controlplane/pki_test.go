package controlplane

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/client-go/tools/clientcmd"
)

// The generated certificates work for what they are issued for: a TLS
// server at the API server's address, verified with the CA, and a client
// certificate whose subject is the identity RBAC sees.
func TestPKI(t *testing.T) {
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := "https://" + l.Addr().String()
	p, err := GeneratePKI(dir, server, []net.IP{net.ParseIP("127.0.0.1")}, "node-a", net.ParseIP("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(p.CACert)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(p.APIServerCert, p.APIServerKey)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c := r.TLS.PeerCertificates[0]
			io.WriteString(w, c.Subject.CommonName)
			for _, o := range c.Subject.Organization {
				io.WriteString(w, "|"+o)
			}
		}),
	}
	go srv.ServeTLS(l, "", "")
	t.Cleanup(func() { srv.Close() })

	tests := []struct{ kubeconfig, want string }{
		{p.AdminKubeconfig, "kubernetes-admin|system:masters"},
		{p.ControllerManagerKubeconfig, "system:kube-controller-manager"},
		{p.SchedulerKubeconfig, "system:kube-scheduler"},
		{p.NodeKubeconfig, "system:node:node-a|system:nodes"},
	}
	for _, tc := range tests {
		t.Run(filepath.Base(tc.kubeconfig), func(t *testing.T) {
			cfg, err := clientcmd.BuildConfigFromFlags("", tc.kubeconfig)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Host != server {
				t.Errorf("server %s, want %s", cfg.Host, server)
			}
			tlsCfg := &tls.Config{RootCAs: pool}
			kp, err := tls.X509KeyPair(cfg.CertData, cfg.KeyData)
			if err != nil {
				t.Fatal(err)
			}
			tlsCfg.Certificates = []tls.Certificate{kp}
			c := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}}
			resp, err := c.Get(server)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			got, _ := io.ReadAll(resp.Body)
			if diff := cmp.Diff(tc.want, string(got)); diff != "" {
				t.Errorf("identity (-want +got):\n%s", diff)
			}
		})
	}
	// The front-proxy client is signed by its own CA, not the cluster's: the
	// aggregator's identity must not pass as a cluster user.
	fp, err := tls.LoadX509KeyPair(p.FrontProxyClientCert, p.FrontProxyClientKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(fp.Certificate[0])
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("the front-proxy client certificate verifies against the cluster CA")
	}
}
