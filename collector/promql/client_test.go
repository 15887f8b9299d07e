package promql

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
)

// queryAnswer is a valid /api/v1/query answer with one sample.
const queryAnswer = `{"status":"success","data":{"resultType":"vector","result":[{"metric":{"pod":"a"},"value":[1700000000,"4.5"]}]}}`

// prometheusAPI answers /api/v1/query when check passes, 401 otherwise.
func prometheusAPI(t *testing.T, check func(r *http.Request, body []byte) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := check(r, body); err != nil {
			t.Logf("server refused: %v", err)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprintf(w, `{"status":"error","errorType":"unauthorized","error":%q}`, err.Error())
			return
		}
		if r.URL.Path != "/api/v1/query" && !strings.HasSuffix(r.URL.Path, "/api/v1/query") {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, queryAnswer)
	})
}

// query runs one instant query through a client built from flags.
func query(t *testing.T, promURL string, args ...string) error {
	t.Helper()
	c := NewClientConfig()
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c.AddFlags(fs, "prometheus-")
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	if err := c.Complete(promURL); err != nil {
		return err
	}
	pc, err := NewClient(c)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, _, _, err := promv1.NewAPI(pc).Query(ctx, "up", time.Unix(1700000000, 0))
	if err != nil {
		return err
	}
	if !strings.Contains(v.String(), "4.5") {
		t.Errorf("answer %s, want the sample 4.5", v)
	}
	return nil
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBearerToken(t *testing.T) {
	srv := httptest.NewServer(prometheusAPI(t, func(r *http.Request, _ []byte) error {
		if got := r.Header.Get("Authorization"); got != "Bearer s3cret" {
			return fmt.Errorf("Authorization %q", got)
		}
		return nil
	}))
	defer srv.Close()
	if err := query(t, srv.URL, "--prometheus-bearer-token-file", writeFile(t, "token", "s3cret\n")); err != nil {
		t.Errorf("right token: %v", err)
	}
	if err := query(t, srv.URL, "--prometheus-bearer-token-file", writeFile(t, "token", "wrong")); err == nil {
		t.Error("wrong token accepted")
	}
	if err := query(t, srv.URL); err == nil {
		t.Error("no token accepted")
	}
	// The same through the auth config file, in Prometheus' own keys.
	cfg := writeFile(t, "auth.yaml", "authorization:\n  type: Bearer\n  credentials_file: "+writeFile(t, "token", "s3cret")+"\n")
	if err := query(t, srv.URL, "--prometheus-auth-config", cfg); err != nil {
		t.Errorf("token from the auth config: %v", err)
	}
}

func TestBasicAuth(t *testing.T) {
	srv := httptest.NewServer(prometheusAPI(t, func(r *http.Request, _ []byte) error {
		u, p, ok := r.BasicAuth()
		if !ok || u != "mlscale" || p != "pa55" {
			return fmt.Errorf("basic auth %q/%q (%v)", u, p, ok)
		}
		return nil
	}))
	defer srv.Close()
	pw := writeFile(t, "pw", "pa55")
	if err := query(t, srv.URL, "--prometheus-basic-auth-username", "mlscale", "--prometheus-basic-auth-password-file", pw); err != nil {
		t.Errorf("right password: %v", err)
	}
	if err := query(t, srv.URL, "--prometheus-basic-auth-username", "mlscale", "--prometheus-basic-auth-password-file", writeFile(t, "pw", "nope")); err == nil {
		t.Error("wrong password accepted")
	}
}

// testPKI is a CA with a serving certificate for 127.0.0.1 and a client
// certificate, as files.
type testPKI struct {
	pool                                                 *x509.CertPool
	caFile, serverCert, serverKey, clientCert, clientKey string
}

func newPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caKey := key()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	issue := func(serial int64, cn string, usage x509.ExtKeyUsage, ips []net.IP) (string, string) {
		k := key()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour),
			NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips, KeyUsage: x509.KeyUsageDigitalSignature}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kd, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return write(cn+".crt", "CERTIFICATE", der), write(cn+".key", "EC PRIVATE KEY", kd)
	}
	p := testPKI{pool: x509.NewCertPool(), caFile: write("ca.crt", "CERTIFICATE", caDER)}
	p.pool.AddCert(ca)
	p.serverCert, p.serverKey = issue(2, "prometheus", x509.ExtKeyUsageServerAuth, []net.IP{net.IPv4(127, 0, 0, 1)})
	p.clientCert, p.clientKey = issue(3, "mlscale-adapter", x509.ExtKeyUsageClientAuth, nil)
	return p
}

// TestTLS: Prometheus behind TLS that requires a client certificate from the
// same CA.
func TestTLS(t *testing.T) {
	pki := newPKI(t)
	srv := httptest.NewUnstartedServer(prometheusAPI(t, func(r *http.Request, _ []byte) error {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || r.TLS.PeerCertificates[0].Subject.CommonName != "mlscale-adapter" {
			return fmt.Errorf("no client certificate")
		}
		return nil
	}))
	cert, err := tls.LoadX509KeyPair(pki.serverCert, pki.serverKey)
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pki.pool, ClientAuth: tls.RequireAndVerifyClientCert}
	srv.StartTLS()
	defer srv.Close()
	if err := query(t, srv.URL, "--prometheus-ca-file", pki.caFile, "--prometheus-cert-file", pki.clientCert, "--prometheus-key-file", pki.clientKey); err != nil {
		t.Errorf("CA and client certificate: %v", err)
	}
	if err := query(t, srv.URL, "--prometheus-ca-file", pki.caFile); err == nil {
		t.Error("accepted without a client certificate")
	}
	if err := query(t, srv.URL, "--prometheus-cert-file", pki.clientCert, "--prometheus-key-file", pki.clientKey); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("an unknown CA: got %v, want a certificate error", err)
	}
}

// sigv4Env gives the AWS default credential chain static credentials from
// the environment and nothing else to find (no shared files, no instance
// metadata).
func sigv4Env(t *testing.T, key, secret string) {
	t.Setenv("AWS_ACCESS_KEY_ID", key)
	t.Setenv("AWS_SECRET_ACCESS_KEY", secret)
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_REGION", "eu-west-1")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_WEB_IDENTITY_TOKEN_FILE", "")
	t.Setenv("AWS_ROLE_ARN", "")
}

// TestSigV4: Amazon Managed Prometheus' authentication. A loopback server
// recomputes each request's signature from the secret it knows (verifySigV4,
// written from AWS's specification and checked on AWS's published test
// vector below) and refuses a mismatch; the client signs with
// prometheus/sigv4, credentials from the default chain's environment.
func TestSigV4(t *testing.T) {
	const key, secret = "AKIDMLSCALETEST", "mlscale/K7MDENG/bPxRfiCYEXAMPLEKEY"
	var signed int
	srv := httptest.NewServer(prometheusAPI(t, func(r *http.Request, body []byte) error {
		if err := verifySigV4(r, body, key, secret, "us-east-1", "aps", time.Now()); err != nil {
			return err
		}
		signed++
		return nil
	}))
	defer srv.Close()
	workspace := srv.URL + "/workspaces/ws-0123"

	sigv4Env(t, key, secret)
	if err := query(t, workspace, "--prometheus-sigv4-region", "us-east-1"); err != nil {
		t.Errorf("signed with the right secret: %v", err)
	}
	if signed == 0 {
		t.Error("no request reached the server signed")
	}
	// The chain's region (AWS_REGION=eu-west-1) signs for another region:
	// the server refuses, so the region really is in the signature.
	if err := query(t, workspace, "--prometheus-sigv4"); err == nil {
		t.Error("a signature for eu-west-1 accepted by a us-east-1 server")
	}
	sigv4Env(t, key, "not-the-secret")
	if err := query(t, workspace, "--prometheus-sigv4-region", "us-east-1"); err == nil {
		t.Error("a signature with the wrong secret accepted")
	}
	// The auth config file, as Prometheus' sigv4 section.
	sigv4Env(t, "", "")
	cfg := writeFile(t, "auth.yaml", fmt.Sprintf("sigv4:\n  region: us-east-1\n  access_key: %s\n  secret_key: %s\n", key, secret))
	if err := query(t, workspace, "--prometheus-auth-config", cfg); err != nil {
		t.Errorf("keys from the auth config: %v", err)
	}
	// No credentials anywhere: an error at start, naming the cause.
	err := query(t, workspace, "--prometheus-sigv4-region", "us-east-1")
	if err == nil || !strings.Contains(err.Error(), "credentials") {
		t.Errorf("no credentials: got %v, want an error about credentials", err)
	}
}

// verifySigV4 checks r's Authorization header (AWS4-HMAC-SHA256) against
// the signature computed here from secret, following AWS's "Create a signed
// AWS API request" steps: canonical request, string to sign, derived key.
func verifySigV4(r *http.Request, body []byte, accessKey, secret, region, service string, now time.Time) error {
	auth := r.Header.Get("Authorization")
	rest, ok := strings.CutPrefix(auth, "AWS4-HMAC-SHA256 ")
	if !ok {
		return fmt.Errorf("Authorization %q is not AWS4-HMAC-SHA256", auth)
	}
	parts := map[string]string{}
	for _, p := range strings.Split(rest, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
		parts[k] = v
	}
	amzDate := r.Header.Get("X-Amz-Date")
	ts, err := time.Parse("20060102T150405Z", amzDate)
	if err != nil {
		return fmt.Errorf("X-Amz-Date %q: %v", amzDate, err)
	}
	if d := now.Sub(ts); d > 5*time.Minute || d < -5*time.Minute {
		return fmt.Errorf("X-Amz-Date %s is %v from now", amzDate, d)
	}
	scope := fmt.Sprintf("%s/%s/%s/aws4_request", amzDate[:8], region, service)
	if want := accessKey + "/" + scope; parts["Credential"] != want {
		return fmt.Errorf("Credential %q, want %q", parts["Credential"], want)
	}
	signedHeaders := strings.Split(parts["SignedHeaders"], ";")
	if !sort.StringsAreSorted(signedHeaders) || !contains(signedHeaders, "host") || !contains(signedHeaders, "x-amz-date") {
		return fmt.Errorf("SignedHeaders %q must be sorted and include host and x-amz-date", parts["SignedHeaders"])
	}
	want := sigV4Signature(r.Method, r.URL.EscapedPath(), r.URL.Query(), headerValues(r, signedHeaders), body, secret, amzDate, region, service)
	if !hmac.Equal([]byte(want), []byte(parts["Signature"])) {
		return fmt.Errorf("signature %s, computed %s", parts["Signature"], want)
	}
	return nil
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// headerValues returns the signed headers' canonical lines' values.
func headerValues(r *http.Request, names []string) map[string]string {
	out := map[string]string{}
	for _, n := range names {
		if n == "host" {
			out[n] = r.Host
			continue
		}
		if n == "content-length" && r.Header.Get(n) == "" {
			out[n] = strconv.FormatInt(r.ContentLength, 10) // a client request keeps it outside Header
			continue
		}
		var vals []string
		for _, v := range r.Header.Values(n) {
			vals = append(vals, strings.Join(strings.Fields(v), " "))
		}
		out[n] = strings.Join(vals, ",")
	}
	return out
}

func hmacSHA256(key []byte, s string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(s))
	return h.Sum(nil)
}

// sigV4Signature computes the hex signature of a request.
func sigV4Signature(method, path string, query url.Values, headers map[string]string, body []byte, secret, amzDate, region, service string) string {
	if path == "" {
		path = "/"
	}
	var qs []string
	for k, vs := range query {
		for _, v := range vs {
			qs = append(qs, awsEscape(k)+"="+awsEscape(v))
		}
	}
	sort.Strings(qs)
	var names []string
	for n := range headers {
		names = append(names, n)
	}
	sort.Strings(names)
	var canonHeaders strings.Builder
	for _, n := range names {
		canonHeaders.WriteString(n + ":" + headers[n] + "\n")
	}
	payload := sha256.Sum256(body)
	canonical := strings.Join([]string{method, path, strings.Join(qs, "&"), canonHeaders.String(), strings.Join(names, ";"), hex.EncodeToString(payload[:])}, "\n")
	sum := sha256.Sum256([]byte(canonical))
	scope := fmt.Sprintf("%s/%s/%s/aws4_request", amzDate[:8], region, service)
	toSign := "AWS4-HMAC-SHA256\n" + amzDate + "\n" + scope + "\n" + hex.EncodeToString(sum[:])
	k := hmacSHA256([]byte("AWS4"+secret), amzDate[:8])
	k = hmacSHA256(k, region)
	k = hmacSHA256(k, service)
	k = hmacSHA256(k, "aws4_request")
	return hex.EncodeToString(hmacSHA256(k, toSign))
}

// awsEscape is URI encoding as SigV4 defines it: everything but
// A-Z a-z 0-9 - _ . ~ as %XX.
func awsEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

// TestVerifierOnAWSTestVectors: the verifier computes the signatures of
// AWS's Signature Version 4 test suite (get-vanilla, get-vanilla-query-order-key-case:
// credentials AKIDEXAMPLE / wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY,
// 20150830T123600Z, us-east-1, service "service"), and agrees with
// aws-sdk-go-v2's signer on a request like the client's.
func TestVerifierOnAWSTestVectors(t *testing.T) {
	const secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
	hdr := map[string]string{"host": "example.amazonaws.com", "x-amz-date": "20150830T123600Z"}
	for _, tc := range []struct {
		name  string
		query url.Values
		want  string
	}{
		{"get-vanilla", nil, "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"},
		{"get-vanilla-query-order-key-case", url.Values{"Param2": {"value2"}, "Param1": {"value1"}}, "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := sigV4Signature("GET", "/", tc.query, hdr, nil, secret, "20150830T123600Z", "us-east-1", "service"); got != tc.want {
				t.Errorf("signature %s, AWS's test suite says %s", got, tc.want)
			}
		})
	}

	body := "query=up&time=1700000000"
	req, err := http.NewRequest(http.MethodPost, "http://127.0.0.1:9090/workspaces/ws-0123/api/v1/query", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	payload := sha256.Sum256([]byte(body))
	at := time.Now().UTC()
	creds := aws.Credentials{AccessKeyID: "AKIDEXAMPLE", SecretAccessKey: secret}
	if err := v4.NewSigner().SignHTTP(context.Background(), creds, req, hex.EncodeToString(payload[:]), "aps", "us-east-1", at); err != nil {
		t.Fatal(err)
	}
	if err := verifySigV4(req, []byte(body), "AKIDEXAMPLE", secret, "us-east-1", "aps", at); err != nil {
		t.Errorf("aws-sdk-go-v2's signature not verified: %v", err)
	}
	if err := verifySigV4(req, []byte(body+"&x=1"), "AKIDEXAMPLE", secret, "us-east-1", "aps", at); err == nil {
		t.Error("a changed body verified")
	}
}

func TestClientConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		url  string
		args []string
		want string
	}{
		{"no URL", "", nil, "want http(s)://"},
		{"not http", "ftp://x", nil, "want http(s)://"},
		{"sigv4 and bearer", "http://p", []string{"--prometheus-sigv4", "--prometheus-bearer-token-file", "/t"}, "cannot be combined"},
		{"basic without user", "http://p", []string{"--prometheus-basic-auth-password-file", "/p"}, "needs a username"},
		{"missing auth config", "http://p", []string{"--prometheus-auth-config", "/nonexistent/auth.yaml"}, "reading the Prometheus auth config"},
		{"misspelt key in the auth config", "http://p", []string{"--prometheus-auth-config", writeFile(t, "a.yaml", "bearer_tokn_file: /t\n")}, "bearer_tokn_file"},
		{"sigv4 key without secret", "http://p", []string{"--prometheus-auth-config", writeFile(t, "a.yaml", "sigv4: {access_key: AK}\n")}, "Secret Key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := NewClientConfig()
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			c.AddFlags(fs, "prometheus-")
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			err := c.Complete(tc.url)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// FuzzAuthConfig feeds arbitrary YAML to the --prometheus-auth-config
// parser: an error or a configuration, never a panic.
func FuzzAuthConfig(f *testing.F) {
	f.Add([]byte("authorization:\n  type: Bearer\n  credentials_file: /t\n"))
	f.Add([]byte("sigv4:\n  region: us-east-1\n  role_arn: arn:aws:iam::1:role/r\nurl: https://aps-workspaces.us-east-1.amazonaws.com/workspaces/ws\n"))
	f.Add([]byte("basic_auth: {username: u, password_file: /p}\ntls_config: {ca_file: /ca, cert_file: /c, key_file: /k}\n"))
	f.Add([]byte("sigv4: [1, 2]\n"))
	f.Add([]byte("url: {a: b}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, h, s, err := parseAuthConfig(data)
		if err != nil {
			return
		}
		c := ClientConfig{URL: "http://127.0.0.1:9090", HTTP: h, SigV4: s}
		_ = c.Validate()
		_ = c.Auth()
	})
}
