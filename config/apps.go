package config

import (
	"fmt"
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
		v.secretFileSet[app] = raw.ClientSecretFile.set
		if file, ok := v.str(key+".client_secret_file", raw.ClientSecretFile); ok {
			app.ClientSecret = v.secret(key+".client_secret_file", v.resolve(file))
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

// secret reads a client secret file. Its contents never appear in a
// message.
func (v *validator) secret(key, path string) string {
	data, info, err := readSmallFile(path)
	if err != nil {
		v.errorf(key, "%v", err)
		return ""
	}
	secret := strings.TrimSpace(string(data))
	if secret == "" {
		v.errorf(key, "%s is empty", path)
		return ""
	}
	// Group-readable (root:broker 0640) is the usual setup; others are not.
	if perm := info.Mode().Perm(); perm&0o004 != 0 {
		v.warnf(key, "%s is readable by others (mode %04o): chmod o-r it", path, perm)
	}
	return secret
}
