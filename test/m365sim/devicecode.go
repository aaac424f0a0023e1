package m365sim

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
)

const (
	deviceCodeLifetime = 15 * time.Minute
	deviceInterval     = 5 * time.Second
)

// deviceAuth is one device authorization (RFC 8628) in progress.
type deviceAuth struct {
	deviceCode, userCode string
	tenantID, clientID   string
	scope                *scopeSet
	expires              time.Time
	interval             time.Duration
	lastPoll             time.Time
	user                 *user // set on approval
	amr                  []string
	declined             bool
}

func (d *deviceAuth) pending(now time.Time) bool {
	return d.user == nil && !d.declined && now.Before(d.expires)
}

type deviceCodeResponse struct {
	UserCode        string `json:"user_code"`
	DeviceCode      string `json:"device_code"`
	VerificationURI string `json:"verification_uri"`
	ExpiresIn       int64  `json:"expires_in"`
	Interval        int64  `json:"interval"`
	Message         string `json:"message"`
}

// handleDeviceCode starts a device authorization. The client is not
// authenticated here; the token endpoint does that when it is polled.
func (e *Entra) handleDeviceCode(w http.ResponseWriter, r *http.Request) {
	f := e.injectedFailure(EndpointDeviceCode)
	var resp *deviceCodeResponse
	if f == nil {
		resp, f = e.deviceCode(r)
	}
	if f != nil {
		e.writeFailure(w, r, f)
		return
	}
	e.traceHeaders(w, r)
	writeJSON(w, http.StatusOK, resp)
}

func (e *Entra) deviceCode(r *http.Request) (*deviceCodeResponse, *Failure) {
	if r.Method != http.MethodPost {
		return nil, errMethod(r.Method)
	}
	r.ParseForm()
	tenantName := r.PathValue("tenant")
	t, f := e.pathTenant(tenantName)
	if f != nil {
		return nil, f
	}
	t, a, f := e.findApp(t, tenantName, r.PostForm.Get("client_id"))
	if f != nil {
		return nil, f
	}
	s, f := parseScope(r.PostForm.Get("scope"), tenantName, false)
	if f != nil {
		return nil, f
	}
	now := e.now()
	d := &deviceAuth{
		deviceCode: "DAQABAAEAAA" + randomString(96),
		userCode:   newUserCode(),
		tenantID:   t.id,
		clientID:   a.ClientID,
		scope:      s,
		expires:    now.Add(deviceCodeLifetime),
		interval:   deviceInterval,
	}
	e.mu.Lock()
	e.devices = slices.DeleteFunc(e.devices, func(d *deviceAuth) bool { return !now.Before(d.expires) })
	e.devices = append(e.devices, d)
	e.broadcastLocked()
	e.mu.Unlock()
	uri := e.url + "/devicelogin"
	return &deviceCodeResponse{
		UserCode:        d.userCode,
		DeviceCode:      d.deviceCode,
		VerificationURI: uri,
		ExpiresIn:       int64(deviceCodeLifetime.Seconds()),
		Interval:        int64(deviceInterval.Seconds()),
		Message:         fmt.Sprintf("To sign in, use a web browser to open the page %s and enter the code %s to authenticate.", uri, d.userCode),
	}, nil
}

// newUserCode makes a code like Entra's: nine letters and digits, without
// the ones people misread.
func newUserCode() string {
	const alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
	b := make([]byte, 9)
	rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// deviceCodeToken answers a poll of the token endpoint.
func (e *Entra) deviceCodeToken(req *tokenRequest) (*tokenResponse, *Failure) {
	code := req.form.Get("device_code")
	if code == "" {
		return nil, errMissingParam("device_code")
	}
	now := e.now()
	e.mu.Lock()
	i := slices.IndexFunc(e.devices, func(d *deviceAuth) bool { return d.deviceCode == code })
	if i < 0 {
		e.mu.Unlock()
		return nil, errBadDeviceCode()
	}
	d := e.devices[i]
	var f *Failure
	switch {
	case d.tenantID != req.tenant.id || d.clientID != req.app.ClientID:
		f = errGrantClient()
	case !now.Before(d.expires):
		f = errDeviceCodeExpired()
	case d.declined:
		f = errDeviceDeclined()
	case d.user != nil:
		// Redeemed once only.
		e.devices = slices.Delete(e.devices, i, i+1)
	case !d.lastPoll.IsZero() && now.Sub(d.lastPoll) < d.interval:
		d.interval += 5 * time.Second
		d.lastPoll = now
		f = errSlowDown()
	default:
		d.lastPoll = now
		f = errAuthorizationPending()
	}
	e.mu.Unlock()
	if f != nil {
		return nil, f
	}
	return e.userTokens(req, delegation{user: d.user, amr: d.amr, scope: d.scope}, d.scope, d.scope.has("offline_access"))
}

// ApproveDeviceCode signs upn in and approves the pending device
// authorization with userCode, as the user would at the verification page.
// A locked or disabled account cannot: the error is a *SignInError.
func (e *Entra) ApproveDeviceCode(userCode, upn string) error {
	return e.decideDevice(userCode, func(t *tenant, d *deviceAuth) error {
		u := t.users[strings.ToLower(upn)]
		if u == nil {
			return fmt.Errorf("m365sim: no user %s in tenant %s", upn, t.domain)
		}
		if f := u.interactiveFailure(); f != nil {
			return signInError(f)
		}
		d.user, d.amr = u, u.amr()
		return nil
	})
}

// DeclineDeviceCode declines the pending device authorization with
// userCode: polls then get authorization_declined.
func (e *Entra) DeclineDeviceCode(userCode string) error {
	return e.decideDevice(userCode, func(_ *tenant, d *deviceAuth) error {
		d.declined = true
		return nil
	})
}

func (e *Entra) decideDevice(userCode string, decide func(*tenant, *deviceAuth) error) error {
	userCode = strings.ToUpper(strings.NewReplacer("-", "", " ", "").Replace(userCode))
	now := e.now()
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, d := range e.devices {
		if d.userCode == userCode && d.pending(now) {
			if err := decide(e.tenants[d.tenantID], d); err != nil {
				return err
			}
			e.broadcastLocked()
			return nil
		}
	}
	return errors.New("m365sim: no pending device code " + userCode)
}

// WaitDeviceCode waits for a pending device authorization and returns the
// user code of the oldest one: what a user would read off the client.
func (e *Entra) WaitDeviceCode(ctx context.Context) (userCode string, err error) {
	err = e.waitFor(ctx, func() bool {
		now := e.now()
		for _, d := range e.devices {
			if d.pending(now) {
				userCode = d.userCode
				return true
			}
		}
		return false
	})
	return userCode, err
}
