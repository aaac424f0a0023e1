package config

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"os"
	"strings"
)

func (v *validator) apps(raws []rawApp) []*App {
	var apps []*App
	first := map[string]string{} // app name -> key of the app defining it
	for i, raw := range raws {
		key := fmt.Sprintf("app[%d]", i+1)
		app := &App{}
		if name, ok := v.required(key+".name", raw.Name); ok {
			if err := checkName(name); err != nil {
				v.errorf(key+".name", "%v", err)
			} else if prev, dup := first[name]; dup {
				v.errorf(key+".name", "%q is already the name of %s", name, prev)
			} else {
				first[name] = key
				app.Name = name
			}
		}
		if tenant, ok := v.required(key+".tenant", raw.Tenant); ok {
			tenant = strings.ToLower(tenant)
			if err := checkTenant(tenant); err != nil {
				v.errorf(key+".tenant", "%v", err)
			}
			app.Tenant = tenant
		}
		if id, ok := v.required(key+".client_id", raw.ClientID); ok {
			if !isGUID(id) {
				v.errorf(key+".client_id", "%q is not a GUID: use the application (client) id of the app registration", id)
			}
			app.ClientID = strings.ToLower(id)
		}
		v.secretFileSet[app] = raw.ClientSecretFile.set || raw.ClientCertificateFile.set
		if file, ok := v.str(key+".client_secret_file", raw.ClientSecretFile); ok {
			app.ClientSecretFile = v.resolve(file)
			app.ClientSecret = v.secret(key+".client_secret_file", app.ClientSecretFile)
		}
		switch d := raw.ClientSecretExpires; {
		case !d.set:
		case d.bad != "":
			v.errorf(key+".client_secret_expires", "%s is not a date: write it as 2027-06-30", d.bad)
		case !raw.ClientSecretFile.set:
			v.errorf(key+".client_secret_expires", "set without client_secret_file")
		default:
			app.ClientSecretExpires = d.t
		}
		v.certificate(key, app, raw)
		app.RedirectURI = DefaultRedirectURI
		if uri, ok := v.str(key+".redirect_uri", raw.RedirectURI); ok {
			if err := checkRedirectURI(uri); err != nil {
				v.errorf(key+".redirect_uri", "%v", err)
			}
			app.RedirectURI = uri
		}
		app.Cloud = CloudByName(DefaultCloud)
		if name, ok := v.str(key+".cloud", raw.Cloud); ok {
			if app.Cloud = CloudByName(name); app.Cloud == nil {
				v.errorf(key+".cloud", "unknown cloud %q (known: %s)", name, cloudNames())
			}
		}
		if app.Cloud != nil {
			app.Authority = app.Cloud.Authority
		}
		if authority, ok := v.str(key+".authority", raw.Authority); ok {
			a, err := checkAuthority(authority)
			if err != nil {
				v.errorf(key+".authority", "%v", err)
			}
			app.Authority = a
		}
		apps = append(apps, app)
	}
	return apps
}

// certificate reads the client certificate and its key. Either credential
// may be set, not both: which one Entra sees would otherwise be a guess.
func (v *validator) certificate(key string, app *App, raw rawApp) {
	certFile, certSet := v.str(key+".client_certificate_file", raw.ClientCertificateFile)
	keyFile, keySet := v.str(key+".client_key_file", raw.ClientKeyFile)
	switch {
	case !certSet && !keySet:
		return
	case certSet != keySet:
		if certSet {
			v.errorf(key+".client_key_file", "required with client_certificate_file")
		} else {
			v.errorf(key+".client_certificate_file", "required with client_key_file")
		}
		return
	case raw.ClientSecretFile.set:
		v.errorf(key+".client_certificate_file", "set together with client_secret_file: choose one credential for the app")
		return
	}
	app.CertificateFile = v.resolve(certFile)
	certPEM, _, err := readSmallFile(app.CertificateFile)
	if err != nil {
		v.errorf(key+".client_certificate_file", "%v", err)
		return
	}
	keyPath := v.resolve(keyFile)
	app.KeyFile = keyPath
	keyPEM, info, err := readSmallFile(keyPath)
	if err != nil {
		v.errorf(key+".client_key_file", "%v", err)
		return
	}
	if perm := info.Mode().Perm(); perm&0o004 != 0 {
		v.warnf(key+".client_key_file", "%s is readable by others (mode %04o): chmod o-r it", keyPath, perm)
	}
	cert, signer, err := parseCertificate(certPEM, keyPEM)
	if err != nil {
		v.errorf(key+".client_certificate_file", "%s: %v", app.CertificateFile, err)
		return
	}
	app.Certificate, app.Key = cert, signer
}

// secret reads a client secret file. Its contents never appear in a
// message.
func (v *validator) secret(key, path string) string {
	secret, info, err := readSecret(path)
	if err != nil {
		v.errorf(key, "%v", err)
		return ""
	}
	// Group-readable (root:broker 0640) is the usual setup; others are not.
	if perm := info.Mode().Perm(); perm&0o004 != 0 {
		v.warnf(key, "%s is readable by others (mode %04o): chmod o-r it", path, perm)
	}
	return secret
}

// ReadClientSecret reads a client secret file again, as broker does when
// the file changes. Errors never quote the file's contents.
func ReadClientSecret(path string) (string, error) {
	secret, _, err := readSecret(path)
	return secret, err
}

func readSecret(path string) (string, os.FileInfo, error) {
	data, info, err := readSmallFile(path)
	if err != nil {
		return "", nil, err
	}
	secret := strings.TrimSpace(string(data))
	clear(data)
	if secret == "" {
		return "", nil, fmt.Errorf("%s is empty", path)
	}
	return secret, info, nil
}

// ReadCertificate reads a client certificate and its RSA key again.
func ReadCertificate(certFile, keyFile string) (*x509.Certificate, crypto.Signer, error) {
	certPEM, _, err := readSmallFile(certFile)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, _, err := readSmallFile(keyFile)
	if err != nil {
		return nil, nil, err
	}
	return parseCertificate(certPEM, keyPEM)
}
