package controlplane

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// CA is a certificate authority held in memory while the cluster's
// certificates are issued.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	PEM  []byte
}

// KeyPair is a PEM certificate and key.
type KeyPair struct {
	CertPEM, KeyPEM []byte
}

func newKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

func serialNumber() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// NewCA creates a self-signed CA valid for a year.
func NewCA(name string) (*CA, error) {
	key, err := newKey()
	if err != nil {
		return nil, fmt.Errorf("creating CA %s: %w", name, err)
	}
	sn, err := serialNumber()
	if err != nil {
		return nil, fmt.Errorf("creating CA %s: %w", name, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("creating CA %s: %w", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("creating CA %s: %w", name, err)
	}
	return &CA{Cert: cert, Key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// CertSpec says what a leaf certificate is for.
type CertSpec struct {
	CommonName    string
	Organizations []string
	DNSNames      []string
	IPs           []net.IP
	Client        bool
	Server        bool
}

// Issue signs a new key pair for spec.
func (ca *CA) Issue(spec CertSpec) (KeyPair, error) {
	key, err := newKey()
	if err != nil {
		return KeyPair{}, fmt.Errorf("issuing %s: %w", spec.CommonName, err)
	}
	sn, err := serialNumber()
	if err != nil {
		return KeyPair{}, fmt.Errorf("issuing %s: %w", spec.CommonName, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: spec.CommonName, Organization: spec.Organizations},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		DNSNames:     spec.DNSNames,
		IPAddresses:  spec.IPs,
	}
	if spec.Client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	if spec.Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return KeyPair{}, fmt.Errorf("issuing %s: %w", spec.CommonName, err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return KeyPair{}, fmt.Errorf("issuing %s: %w", spec.CommonName, err)
	}
	return KeyPair{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

// Write stores the pair as dir/name.crt and dir/name.key.
func (kp KeyPair) Write(dir, name string) (certFile, keyFile string, err error) {
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, kp.CertPEM, 0o644); err != nil {
		return "", "", fmt.Errorf("writing %s: %w", certFile, err)
	}
	if err := os.WriteFile(keyFile, kp.KeyPEM, 0o600); err != nil {
		return "", "", fmt.Errorf("writing %s: %w", keyFile, err)
	}
	return certFile, keyFile, nil
}

// PKI is every file the control plane and the node agent are started with.
type PKI struct {
	Dir                                          string
	CACert                                       string
	APIServerCert, APIServerKey                  string
	KubeletClientCert, KubeletClientKey          string
	FrontProxyCACert                             string
	FrontProxyClientCert, FrontProxyClientKey    string
	ServiceAccountKey, ServiceAccountPub         string
	NodeServingCert, NodeServingKey              string
	AdminKubeconfig, ControllerManagerKubeconfig string
	SchedulerKubeconfig, NodeKubeconfig          string
}

// GeneratePKI writes a fresh set of certificates and kubeconfigs into dir for
// an API server reachable at server (https://IP:port) whose IPs are ips, and
// a node called nodeName with address nodeIP.
func GeneratePKI(dir, server string, ips []net.IP, nodeName string, nodeIP net.IP) (*PKI, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating %s: %w", dir, err)
	}
	ca, err := NewCA("mlscale-local-ca")
	if err != nil {
		return nil, err
	}
	fp, err := NewCA("mlscale-local-front-proxy-ca")
	if err != nil {
		return nil, err
	}
	p := &PKI{Dir: dir, CACert: filepath.Join(dir, "ca.crt"), FrontProxyCACert: filepath.Join(dir, "front-proxy-ca.crt")}
	if err := os.WriteFile(p.CACert, ca.PEM, 0o644); err != nil {
		return nil, fmt.Errorf("writing CA: %w", err)
	}
	if err := os.WriteFile(p.FrontProxyCACert, fp.PEM, 0o644); err != nil {
		return nil, fmt.Errorf("writing front-proxy CA: %w", err)
	}
	issue := func(c *CA, name string, spec CertSpec) (string, string, error) {
		kp, err := c.Issue(spec)
		if err != nil {
			return "", "", err
		}
		return kp.Write(dir, name)
	}
	apiIPs := append([]net.IP{net.ParseIP("198.19.0.1")}, ips...)
	if p.APIServerCert, p.APIServerKey, err = issue(ca, "apiserver", CertSpec{
		CommonName: "kube-apiserver", Server: true, IPs: apiIPs,
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
	}); err != nil {
		return nil, err
	}
	if p.KubeletClientCert, p.KubeletClientKey, err = issue(ca, "apiserver-kubelet-client", CertSpec{
		CommonName: "kube-apiserver-kubelet-client", Organizations: []string{"system:masters"}, Client: true,
	}); err != nil {
		return nil, err
	}
	if p.FrontProxyClientCert, p.FrontProxyClientKey, err = issue(fp, "front-proxy-client", CertSpec{
		CommonName: "front-proxy-client", Client: true,
	}); err != nil {
		return nil, err
	}
	if p.NodeServingCert, p.NodeServingKey, err = issue(ca, "kubelet-serving", CertSpec{
		CommonName: "system:node:" + nodeName, Organizations: []string{"system:nodes"}, Server: true,
		IPs: []net.IP{nodeIP}, DNSNames: []string{nodeName},
	}); err != nil {
		return nil, err
	}
	saKey, err := newKey()
	if err != nil {
		return nil, fmt.Errorf("creating the service-account key: %w", err)
	}
	saDER, err := x509.MarshalECPrivateKey(saKey)
	if err != nil {
		return nil, fmt.Errorf("creating the service-account key: %w", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return nil, fmt.Errorf("creating the service-account key: %w", err)
	}
	p.ServiceAccountKey, p.ServiceAccountPub = filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	if err := os.WriteFile(p.ServiceAccountKey, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: saDER}), 0o600); err != nil {
		return nil, fmt.Errorf("writing the service-account key: %w", err)
	}
	if err := os.WriteFile(p.ServiceAccountPub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		return nil, fmt.Errorf("writing the service-account key: %w", err)
	}
	// One kubeconfig per identity, as kubeadm writes them: RBAC sees each
	// component as itself (system:kube-controller-manager, system:node:X...).
	users := []struct {
		file *string
		name string
		cn   string
		orgs []string
	}{
		{&p.AdminKubeconfig, "admin.kubeconfig", "kubernetes-admin", []string{"system:masters"}},
		{&p.ControllerManagerKubeconfig, "controller-manager.kubeconfig", "system:kube-controller-manager", nil},
		{&p.SchedulerKubeconfig, "scheduler.kubeconfig", "system:kube-scheduler", nil},
		{&p.NodeKubeconfig, "node.kubeconfig", "system:node:" + nodeName, []string{"system:nodes"}},
	}
	for _, u := range users {
		kp, err := ca.Issue(CertSpec{CommonName: u.cn, Organizations: u.orgs, Client: true})
		if err != nil {
			return nil, err
		}
		*u.file = filepath.Join(dir, u.name)
		if err := WriteKubeconfig(*u.file, server, ca.PEM, u.cn, kp); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// WriteKubeconfig writes a kubeconfig with embedded credentials.
func WriteKubeconfig(path, server string, caPEM []byte, user string, kp KeyPair) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["mlscale-local"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: kp.CertPEM, ClientKeyData: kp.KeyPEM}
	cfg.Contexts["mlscale-local"] = &clientcmdapi.Context{Cluster: "mlscale-local", AuthInfo: user, Namespace: "default"}
	cfg.CurrentContext = "mlscale-local"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("writing kubeconfig %s: %w", path, err)
	}
	return os.Chmod(path, 0o600)
}
