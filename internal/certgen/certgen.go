// Package certgen writes the certificates mlscale's manifests need where
// cert-manager is not installed: a CA, serving certificates for the adapter
// (called by the kube-apiserver aggregator) and the scaler (called by KEDA),
// and a client certificate KEDA presents to the scaler. `make certs` runs it;
// manifests/components/certs turns the files into Secrets.
package certgen

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Leaf describes one certificate signed by the CA; Name is its file stem.
type Leaf struct {
	Name     string
	Common   string
	DNSNames []string
	IPs      []net.IP
	Usage    x509.ExtKeyUsage
}

// Leaves are the certificates the manifests mount. The aggregator and KEDA
// verify a serving certificate against the Service's DNS name whichever
// endpoint address they dial; localhost and the loopback addresses are there
// for tools run next to a process on the local cluster.
func Leaves() []Leaf {
	svc := func(name string) []string {
		return []string{name, name + ".mlscale", name + ".mlscale.svc", name + ".mlscale.svc.cluster.local", "localhost"}
	}
	loop := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	return []Leaf{
		{Name: "adapter", Common: "mlscale-adapter.mlscale.svc", DNSNames: svc("mlscale-adapter"), IPs: loop, Usage: x509.ExtKeyUsageServerAuth},
		{Name: "scaler", Common: "mlscale-scaler.mlscale.svc", DNSNames: svc("mlscale-scaler"), IPs: loop, Usage: x509.ExtKeyUsageServerAuth},
		{Name: "keda-client", Common: "keda-operator", Usage: x509.ExtKeyUsageClientAuth},
	}
}

// Options for Generate.
type Options struct {
	Dir string
	// Validity of the leaves; the CA lives ten times as long.
	Validity time.Duration
	// Force regenerates everything even if a complete, valid set exists.
	Force bool
	// Now is the start of validity (time.Now when zero).
	Now time.Time
}

// Result says what Generate did.
type Result struct {
	// Kept is true when a complete, still-valid set was left as it was.
	Kept  bool
	Files []string
}

// Generate writes ca.crt and, for every leaf, NAME.crt and NAME.key into
// opts.Dir (keys 0600, the directory 0700). An existing complete set that is
// valid for at least another quarter of its validity is kept, so re-running
// `make certs` does not rotate certificates under running pods. ca.key is
// written too so that the set can be extended, never committed (the
// directory is git-ignored).
func Generate(opts Options) (Result, error) {
	if opts.Dir == "" {
		return Result{}, errors.New("generating certificates: no output directory")
	}
	if opts.Validity <= 0 {
		opts.Validity = 365 * 24 * time.Hour
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	leaves := Leaves()
	if !opts.Force {
		if ok, files := validSet(opts.Dir, leaves, now.Add(opts.Validity/4)); ok {
			return Result{Kept: true, Files: files}, nil
		}
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return Result{}, fmt.Errorf("generating certificates: %w", err)
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Result{}, fmt.Errorf("generating the CA key: %w", err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "mlscale-ca", Organization: []string{"mlscale"}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(10 * opts.Validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return Result{}, fmt.Errorf("signing the CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return Result{}, fmt.Errorf("parsing the CA certificate: %w", err)
	}
	var files []string
	write := func(name string, blockType string, der []byte, mode fs.FileMode) error {
		p := filepath.Join(opts.Dir, name)
		if err := writeFile(p, pem.EncodeToMemory(&pem.Block{Type: blockType, Bytes: der}), mode); err != nil {
			return fmt.Errorf("writing %s: %w", p, err)
		}
		files = append(files, p)
		return nil
	}
	if err := write("ca.crt", "CERTIFICATE", caDER, 0o644); err != nil {
		return Result{}, err
	}
	if err := writeKey(write, "ca.key", caKey); err != nil {
		return Result{}, err
	}
	for _, l := range leaves {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return Result{}, fmt.Errorf("generating the %s key: %w", l.Name, err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: serial(),
			Subject:      pkix.Name{CommonName: l.Common, Organization: []string{"mlscale"}},
			DNSNames:     l.DNSNames,
			IPAddresses:  l.IPs,
			NotBefore:    now.Add(-time.Minute),
			NotAfter:     now.Add(opts.Validity),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{l.Usage},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
		if err != nil {
			return Result{}, fmt.Errorf("signing the %s certificate: %w", l.Name, err)
		}
		if err := write(l.Name+".crt", "CERTIFICATE", der, 0o644); err != nil {
			return Result{}, err
		}
		if err := writeKey(write, l.Name+".key", key); err != nil {
			return Result{}, err
		}
	}
	return Result{Files: files}, nil
}

func writeKey(write func(string, string, []byte, fs.FileMode) error, name string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encoding %s: %w", name, err)
	}
	return write(name, "PRIVATE KEY", der, 0o600)
}

// writeFile replaces path atomically, so a reader never sees half a key.
func writeFile(path string, data []byte, mode fs.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		// crypto/rand does not fail on supported platforms.
		panic(err)
	}
	return n
}

// validSet reports whether dir holds a CA and every leaf, each leaf signed by
// that CA with its key matching, and all valid until notAfter.
func validSet(dir string, leaves []Leaf, notAfter time.Time) (bool, []string) {
	ca, err := ReadCert(filepath.Join(dir, "ca.crt"))
	if err != nil || ca.NotAfter.Before(notAfter) {
		return false, nil
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	files := []string{filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")}
	for _, l := range leaves {
		crt := filepath.Join(dir, l.Name+".crt")
		key := filepath.Join(dir, l.Name+".key")
		c, err := ReadCert(crt)
		if err != nil || c.NotAfter.Before(notAfter) {
			return false, nil
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{l.Usage}}); err != nil {
			return false, nil
		}
		if !slices.Equal(c.DNSNames, l.DNSNames) {
			return false, nil
		}
		if _, err := tls.LoadX509KeyPair(crt, key); err != nil { // key matches
			return false, nil
		}
		files = append(files, crt, key)
	}
	return true, files
}

// ReadCert reads the first PEM certificate in path.
func ReadCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: no PEM certificate", path)
	}
	return x509.ParseCertificate(blk.Bytes)
}
