package m365sim

import (
	"slices"
	"strings"
)

// resource is an API tokens can be issued for.
type resource struct {
	aud string
	// ids are the identifiers a scope may name it by, lower case: app ID
	// URIs and the app ID.
	ids []string
	// scopes are its delegated permissions; consent is assumed for all.
	scopes []string
	// shortScopes: the token response names scopes without the resource
	// (Graph's habit).
	shortScopes bool
}

var (
	outlook = &resource{
		aud: "https://outlook.office.com",
		ids: []string{"https://outlook.office.com", "https://outlook.office365.com", "00000002-0000-0ff1-ce00-000000000000"},
		scopes: []string{
			"IMAP.AccessAsUser.All", "POP.AccessAsUser.All", "SMTP.Send",
			"EWS.AccessAsUser.All", "Mail.Read", "Mail.Send",
		},
	}
	// Graph lists IMAP and SMTP permissions too, but its tokens have the
	// wrong audience for Exchange: a classic mistake worth simulating.
	graph = &resource{
		aud: "https://graph.microsoft.com",
		ids: []string{"https://graph.microsoft.com", "00000003-0000-0000-c000-000000000000"},
		scopes: []string{
			"User.Read", "User.ReadBasic.All", "Mail.Read", "Mail.ReadWrite", "Mail.Send",
			"Mail.ReadBasic", "Mail.Read.Shared", "Mail.ReadWrite.Shared", "Mail.Send.Shared",
			"Presence.Read", "Presence.Read.All", "Presence.ReadWrite",
			"Calendars.Read", "Calendars.ReadWrite", "Contacts.Read",
			"IMAP.AccessAsUser.All", "POP.AccessAsUser.All", "SMTP.Send",
		},
		shortScopes: true,
	}
	resources = []*resource{outlook, graph}
)

// oidcScopes are OpenID Connect scopes, which name no resource.
var oidcScopes = []string{"openid", "profile", "email", "offline_access"}

func lookupResource(id string) *resource {
	id = strings.TrimRight(strings.ToLower(id), "/")
	for _, r := range resources {
		if slices.Contains(r.ids, id) {
			return r
		}
	}
	return nil
}

// cutResource splits "https://outlook.office.com/SMTP.Send" into resource
// and permission; ok is false for a bare permission such as "User.Read".
func cutResource(s string) (res, name string, ok bool) {
	i := strings.LastIndex(s, "/")
	if i < 0 {
		return "", s, false
	}
	return s[:i], s[i+1:], true
}

// appID is the resource's application ID, the last of its ids.
func (r *resource) appID() string { return r.ids[len(r.ids)-1] }

func (r *resource) scope(name string) (string, bool) {
	for _, s := range r.scopes {
		if strings.EqualFold(s, name) {
			return s, true
		}
	}
	return "", false
}

// scopeSet is a parsed scope parameter.
type scopeSet struct {
	res       *resource
	perms     []string // canonical permission names
	isDefault bool     // "<resource>/.default"
	oidc      []string
}

func (s *scopeSet) has(oidc string) bool { return slices.Contains(s.oidc, oidc) }

// parseScope parses the scope parameter of a request to tenant. appOnly
// applies the client credentials rule: only "<resource>/.default".
func parseScope(raw, tenantName string, appOnly bool) (*scopeSet, *Failure) {
	fields := strings.Fields(raw)
	if len(fields) == 0 {
		return nil, errMissingParam("scope")
	}
	s := &scopeSet{}
	for _, f := range fields {
		if i := slices.Index(oidcScopes, strings.ToLower(f)); i >= 0 {
			if !s.has(oidcScopes[i]) {
				s.oidc = append(s.oidc, oidcScopes[i])
			}
			continue
		}
		res := graph // Entra's default resource for bare names
		prefix, name, ok := cutResource(f)
		if ok {
			if res = lookupResource(prefix); res == nil {
				return nil, errResourceNotFound(prefix, tenantName)
			}
		}
		if s.res != nil && s.res != res {
			return nil, errMixedResources(raw)
		}
		s.res = res
		if name == ".default" {
			s.isDefault = true
			continue
		}
		if appOnly {
			return nil, errNotDefaultScope(raw)
		}
		perm, ok := res.scope(name)
		if !ok {
			return nil, errInvalidScope(f)
		}
		if !slices.Contains(s.perms, perm) {
			s.perms = append(s.perms, perm)
		}
	}
	switch {
	case s.isDefault && len(s.perms) > 0:
		return nil, errInvalidScope(raw)
	case appOnly && (!s.isDefault || len(s.oidc) > 0):
		return nil, errInvalidScope(raw)
	case s.res == nil:
		// Only OpenID scopes: Entra issues a Graph token to read the profile.
		s.res, s.perms = graph, []string{"User.Read"}
	case s.isDefault && !appOnly:
		s.perms = slices.Clone(s.res.scopes)
	}
	return s, nil
}

// responseScope is the scope field of a token response.
func (s *scopeSet) responseScope() string {
	out := make([]string, len(s.perms))
	for i, p := range s.perms {
		if s.res.shortScopes {
			out[i] = p
		} else {
			out[i] = s.res.aud + "/" + p
		}
	}
	return strings.Join(out, " ")
}
