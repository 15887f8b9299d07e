package promql

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"

	promapi "github.com/prometheus/client_golang/api"
	"github.com/prometheus/common/config"
	"github.com/prometheus/sigv4"
	"go.yaml.in/yaml/v2"
)

// ClientConfig says where Prometheus is and how to authenticate to it. The
// HTTP part is Prometheus' own client configuration (prometheus/common's
// HTTPClientConfig: bearer token, basic auth, TLS with a CA and a client
// certificate, proxy), and SigV4 is the signing Prometheus itself uses for
// Amazon Managed Prometheus (prometheus/sigv4), so both behave as in a
// Prometheus remote_write or remote_read section.
type ClientConfig struct {
	// URL is the Prometheus API root: http://prometheus:9090, or for Amazon
	// Managed Prometheus https://aps-workspaces.REGION.amazonaws.com/workspaces/WORKSPACE_ID.
	URL  string
	HTTP config.HTTPClientConfig
	// SigV4, if set, signs every request with AWS Signature Version 4
	// (service "aps" unless service_name says otherwise). Credentials come
	// from the AWS default chain (environment, shared config and profile,
	// web identity token, which is how IRSA on EKS provides them, instance
	// role) unless access_key/secret_key are given; role_arn assumes a role.
	SigV4 *sigv4.SigV4Config

	// file is --prometheus-auth-config; flags set on top of it.
	file                                 string
	bearerTokenFile, username, passwFile string
	caFile, certFile, keyFile, server    string
	insecure, useSigV4                   bool
	region, roleARN, profile             string
}

// parseAuthConfig reads the YAML of --prometheus-auth-config: Prometheus'
// http client keys (authorization, bearer_token_file, basic_auth,
// tls_config, proxy_url, ...) beside sigv4 and url, as in a Prometheus
// remote_read section. Each part is decoded strictly by its own type.
func parseAuthConfig(data []byte) (url string, h config.HTTPClientConfig, s *sigv4.SigV4Config, err error) {
	var doc yaml.MapSlice
	if err := yaml.UnmarshalStrict(data, &doc); err != nil {
		return "", h, nil, err
	}
	var rest yaml.MapSlice
	for _, kv := range doc {
		switch kv.Key {
		case "url":
			u, ok := kv.Value.(string)
			if !ok {
				return "", h, nil, fmt.Errorf("url: want a string")
			}
			url = u
		case "sigv4":
			b, err := yaml.Marshal(kv.Value)
			if err != nil {
				return "", h, nil, err
			}
			s = &sigv4.SigV4Config{}
			if err := yaml.UnmarshalStrict(b, s); err != nil {
				return "", h, nil, fmt.Errorf("sigv4: %w", err)
			}
		default:
			rest = append(rest, kv)
		}
	}
	h = config.DefaultHTTPClientConfig
	b, err := yaml.Marshal(rest)
	if err != nil {
		return "", h, nil, err
	}
	if err := yaml.UnmarshalStrict(b, &h); err != nil {
		return "", h, nil, err
	}
	return url, h, s, nil
}

// NewClientConfig returns a configuration with Prometheus' client defaults
// (redirects followed, HTTP/2 on) and no authentication.
func NewClientConfig() ClientConfig {
	return ClientConfig{HTTP: config.DefaultHTTPClientConfig}
}

// AddFlags registers the authentication flags, each name prefixed.
func (c *ClientConfig) AddFlags(fs *flag.FlagSet, prefix string) {
	fs.StringVar(&c.file, prefix+"auth-config", "", "YAML file with Prometheus' HTTP client settings (authorization, bearer_token_file, basic_auth, tls_config, proxy_url, ...) and sigv4, as in a Prometheus remote_read section; the flags below override it")
	fs.StringVar(&c.bearerTokenFile, prefix+"bearer-token-file", "", "send the token in this file (re-read on every request) as Authorization: Bearer")
	fs.StringVar(&c.username, prefix+"basic-auth-username", "", "HTTP basic auth user")
	fs.StringVar(&c.passwFile, prefix+"basic-auth-password-file", "", "HTTP basic auth password, read from this file")
	fs.StringVar(&c.caFile, prefix+"ca-file", "", "CA bundle that signs Prometheus' serving certificate")
	fs.StringVar(&c.certFile, prefix+"cert-file", "", "client certificate (mutual TLS), with --"+prefix+"key-file")
	fs.StringVar(&c.keyFile, prefix+"key-file", "", "client certificate's private key")
	fs.StringVar(&c.server, prefix+"tls-server-name", "", "name to verify Prometheus' certificate against, if not the URL's host")
	fs.BoolVar(&c.insecure, prefix+"insecure-skip-tls-verify", false, "do not verify Prometheus' certificate (testing only)")
	fs.BoolVar(&c.useSigV4, prefix+"sigv4", false, "sign requests with AWS SigV4 (Amazon Managed Prometheus), credentials from the AWS default chain (IRSA on EKS)")
	fs.StringVar(&c.region, prefix+"sigv4-region", "", "AWS region of the workspace (default: the chain's, e.g. AWS_REGION); implies --"+prefix+"sigv4")
	fs.StringVar(&c.roleARN, prefix+"sigv4-role-arn", "", "assume this IAM role before signing; implies --"+prefix+"sigv4")
	fs.StringVar(&c.profile, prefix+"sigv4-profile", "", "AWS shared-config profile; implies --"+prefix+"sigv4")
}

// Complete reads --prometheus-auth-config, applies the flags over it and
// validates the result; url is --prometheus-url (a URL in the file is used
// when it is empty).
func (c *ClientConfig) Complete(promURL string) error {
	if c.file != "" {
		data, err := os.ReadFile(c.file)
		if err != nil {
			return fmt.Errorf("reading the Prometheus auth config: %w", err)
		}
		fileURL, h, s, err := parseAuthConfig(data)
		if err != nil {
			return fmt.Errorf("Prometheus auth config %s: %w", c.file, err)
		}
		c.HTTP, c.SigV4 = h, s
		if promURL == "" {
			promURL = fileURL
		}
	}
	c.URL = promURL
	h := &c.HTTP
	if c.bearerTokenFile != "" {
		h.Authorization, h.BearerToken, h.BearerTokenFile = &config.Authorization{Type: "Bearer", CredentialsFile: c.bearerTokenFile}, "", ""
	}
	if c.username != "" || c.passwFile != "" {
		h.BasicAuth = &config.BasicAuth{Username: c.username, PasswordFile: c.passwFile}
	}
	for _, f := range []struct {
		dst *string
		v   string
	}{{&h.TLSConfig.CAFile, c.caFile}, {&h.TLSConfig.CertFile, c.certFile}, {&h.TLSConfig.KeyFile, c.keyFile}, {&h.TLSConfig.ServerName, c.server}} {
		if f.v != "" {
			*f.dst = f.v
		}
	}
	if c.insecure {
		h.TLSConfig.InsecureSkipVerify = true
	}
	if c.useSigV4 || c.region != "" || c.roleARN != "" || c.profile != "" {
		if c.SigV4 == nil {
			c.SigV4 = &sigv4.SigV4Config{}
		}
		for _, f := range []struct {
			dst *string
			v   string
		}{{&c.SigV4.Region, c.region}, {&c.SigV4.RoleARN, c.roleARN}, {&c.SigV4.Profile, c.profile}} {
			if f.v != "" {
				*f.dst = f.v
			}
		}
	}
	return c.Validate()
}

// Validate checks the configuration as Prometheus does, plus what only
// holds here: a URL, and SigV4 alone (it writes the Authorization header).
func (c *ClientConfig) Validate() error {
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("Prometheus URL %q: want http(s)://host[:port][/path]", c.URL)
	}
	if err := c.HTTP.Validate(); err != nil {
		return fmt.Errorf("Prometheus client config: %w", err)
	}
	if c.HTTP.BasicAuth != nil && c.HTTP.BasicAuth.Username == "" && c.HTTP.BasicAuth.UsernameFile == "" {
		return errors.New("Prometheus client config: basic auth needs a username")
	}
	if c.SigV4 != nil {
		if c.HTTP.BasicAuth != nil || c.HTTP.Authorization != nil || c.HTTP.OAuth2 != nil {
			return errors.New("Prometheus client config: sigv4 signs the Authorization header, so it cannot be combined with bearer, basic or OAuth2 auth")
		}
		if err := c.SigV4.Validate(); err != nil {
			return fmt.Errorf("Prometheus sigv4 config: %w", err)
		}
	}
	return nil
}

// Auth names the authentication in use, for the log (never a secret).
func (c *ClientConfig) Auth() string {
	switch {
	case c.SigV4 != nil:
		return "sigv4"
	case c.HTTP.BasicAuth != nil:
		return "basic"
	case c.HTTP.Authorization != nil:
		return c.HTTP.Authorization.Type
	case c.HTTP.OAuth2 != nil:
		return "oauth2"
	}
	return "none"
}

// NewClient builds the Prometheus API client: Prometheus' round tripper for
// TLS and credentials, wrapped in the SigV4 signer when configured. Building
// the signer resolves AWS credentials once, so missing ones fail here, at
// start, not on the first query.
func NewClient(c ClientConfig) (promapi.Client, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	rt, err := config.NewRoundTripperFromConfig(c.HTTP, "mlscale-adapter")
	if err != nil {
		return nil, fmt.Errorf("Prometheus client: %w", err)
	}
	if c.SigV4 != nil {
		if rt, err = sigv4.NewSigV4RoundTripper(c.SigV4, rt); err != nil {
			return nil, fmt.Errorf("Prometheus client: sigv4: %w", err)
		}
	}
	pc, err := promapi.NewClient(promapi.Config{Address: c.URL, RoundTripper: rt})
	if err != nil {
		return nil, fmt.Errorf("Prometheus client: %w", err)
	}
	return pc, nil
}
