package config

import (
	"crypto"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// parseCertificate reads a PEM certificate (the first of a chain) and its
// PEM private key. Entra verifies client assertions with RSA keys only.
func parseCertificate(certPEM, keyPEM []byte) (*x509.Certificate, crypto.Signer, error) {
	defer clear(keyPEM)
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// tls's messages name no secret; they say which part is wrong.
		return nil, nil, fmt.Errorf("certificate and key do not form a pair: %v", err)
	}
	key, ok := pair.PrivateKey.(*rsa.PrivateKey)
	if !ok {
		return nil, nil, errors.New("the key is not an RSA key; Entra accepts RSA certificates for client assertions")
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

// checkRedirectURI accepts what Entra registers for the flows broker runs:
// an http URI on localhost (any port matches) or an https URI.
func checkRedirectURI(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("%q is not an absolute URI without query or fragment", s)
	}
	switch {
	case u.Scheme == "https":
		return nil
	case u.Scheme == "http" && strings.EqualFold(u.Hostname(), "localhost"):
		return nil
	case u.Scheme == "http" && u.Hostname() == "127.0.0.1":
		return fmt.Errorf("%q: Entra registers 127.0.0.1 only through the app manifest; use http://localhost", s)
	}
	return fmt.Errorf("%q: Entra accepts http only for localhost; use http://localhost or an https URI", s)
}
