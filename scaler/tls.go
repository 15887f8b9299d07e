package scaler

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// ServerTLSConfig serves certFile/keyFile and, when clientCAFile is set,
// requires and verifies client certificates against it: the server side of
// KEDA's TriggerAuthentication `caCert` (KEDA verifies us) and
// `tlsClientCert`/`tlsClientKey` (we verify KEDA).
//
// The files are stat'ed at most once a second on new handshakes and re-read
// when they change, so a Secret rotated by cert-manager applies without a
// restart. A broken replacement is logged and the last good material kept.
func ServerTLSConfig(certFile, keyFile, clientCAFile string, log *slog.Logger) (*tls.Config, error) {
	if log == nil {
		log = slog.Default()
	}
	kp := &reloader[tls.Certificate]{files: []string{certFile, keyFile}, log: log, load: func() (*tls.Certificate, error) {
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("loading the serving key pair %s, %s: %w", certFile, keyFile, err)
		}
		return &c, nil
	}}
	if _, err := kp.get(); err != nil {
		return nil, err
	}
	base := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// gRPC requires HTTP/2 negotiated by ALPN.
		NextProtos: []string{"h2"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return kp.get()
		},
	}
	if clientCAFile == "" {
		return base, nil
	}
	ca := &reloader[x509.CertPool]{files: []string{clientCAFile}, log: log, load: func() (*x509.CertPool, error) {
		pem, err := os.ReadFile(clientCAFile)
		if err != nil {
			return nil, fmt.Errorf("reading the client CA %s: %w", clientCAFile, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("reading the client CA %s: no PEM certificate in it", clientCAFile)
		}
		return pool, nil
	}}
	if _, err := ca.get(); err != nil {
		return nil, err
	}
	base.ClientAuth = tls.RequireAndVerifyClientCert
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			pool, err := ca.get()
			if err != nil {
				return nil, err
			}
			c := base.Clone()
			c.ClientCAs = pool
			return c, nil
		},
	}, nil
}

// reloader caches what load builds from files, reloading when any file's
// size or modification time changes.
type reloader[T any] struct {
	files []string
	load  func() (*T, error)
	log   *slog.Logger

	mu      sync.Mutex
	val     *T
	stamp   string
	checked time.Time
}

func (r *reloader[T]) get() (*T, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if r.val != nil && now.Sub(r.checked) < time.Second {
		return r.val, nil
	}
	r.checked = now
	stamp := ""
	for _, f := range r.files {
		// Stat follows the symlinks a mounted Secret swaps on update.
		if st, err := os.Stat(f); err == nil {
			stamp += fmt.Sprintf("%s:%d:%d;", f, st.Size(), st.ModTime().UnixNano())
		}
	}
	if r.val != nil && stamp == r.stamp {
		return r.val, nil
	}
	v, err := r.load()
	if err != nil {
		if r.val != nil {
			r.log.Error("reloading TLS material failed; keeping the previous one", "err", err)
			return r.val, nil
		}
		return nil, err
	}
	r.val, r.stamp = v, stamp
	return v, nil
}
