package broker

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/mailbroker/broker/config"
	"golang.org/x/oauth2"
)

// Credentials are what an interactive sign-in obtained. `broker login`
// hands them to the daemon over the control socket (or stores them itself
// when no daemon runs); SignedIn seals them.
type Credentials struct {
	// User is who signed in, from the ID token, lower case.
	User         string `json:"user"`
	AccessToken  string `json:"access_token"`
	ExpiresIn    int64  `json:"expires_in"`
	Scope        string `json:"scope,omitempty"`
	RefreshToken string `json:"refresh_token"`
	// Password is kept for the password flow only, so that broker can sign
	// in again when the refresh token dies.
	Password        string    `json:"password,omitempty"`
	PasswordExpires time.Time `json:"password_expires,omitzero"`
}

// interactiveScopes adds OpenID Connect's scopes to an account's, so that
// the ID token names who signed in.
func interactiveScopes(acct *config.Account) string { return withOIDC(acct.Scopes) }

// withOIDC adds openid, profile and offline_access to scopes.
func withOIDC(resourceScopes []string) string {
	scopes := slices.Clone(resourceScopes)
	for _, s := range []string{"openid", "profile", "offline_access"} {
		if !slices.Contains(scopes, s) {
			scopes = append(scopes, s)
		}
	}
	return strings.Join(scopes, " ")
}

// SignIn runs the interactive part of a delegated flow for one account.
type SignIn struct {
	acct *config.Account
	ep   endpoint
	now  func() time.Time
}

// NewSignIn prepares a sign-in for acct, whose flow must be delegated.
func NewSignIn(acct *config.Account) (*SignIn, error) {
	if !acct.Delegated() {
		return nil, fmt.Errorf("%s uses flow %s: no one signs in, broker gets its tokens by itself", acct.Mailbox, acct.Flow)
	}
	return &SignIn{acct: acct, ep: newEndpoint(acct.App, nil), now: time.Now}, nil
}

// credentials checks who signed in and keeps what broker stores.
func (s *SignIn) credentials(tr *tokenResponse, password string) (*Credentials, error) {
	if tr.RefreshToken == "" {
		return nil, errors.New("the identity platform returned no refresh token: the account's scopes must include offline_access")
	}
	tok, err := tr.toToken(s.now())
	if err != nil {
		return nil, err
	}
	c := &Credentials{
		AccessToken:  tok.AccessToken,
		ExpiresIn:    int64(tok.lifetime().Seconds()),
		Scope:        tok.Scope,
		RefreshToken: tok.RefreshToken,
		Password:     password,
	}
	if tr.IDToken != "" {
		claims, err := parseIDToken(tr.IDToken)
		if err != nil {
			return nil, err
		}
		c.User = claims.user()
		c.PasswordExpires = claims.passwordExpires()
	}
	if want := s.acct.LoginUser; c.User != "" && c.User != want {
		return nil, fmt.Errorf("signed in as %s, but account %s signs in as %s: sign in again as %s (or set login_user)", c.User, s.acct.Mailbox, want, want)
	}
	return c, nil
}

// DeviceCode is a device authorization in progress (RFC 8628).
type DeviceCode struct {
	UserCode        string
	VerificationURI string
	// Message is Entra's instruction for the user, in its language.
	Message   string
	ExpiresAt time.Time
	Interval  time.Duration

	deviceCode string
}

// StartDeviceCode asks for a user code to show the administrator.
func (s *SignIn) StartDeviceCode(ctx context.Context) (*DeviceCode, error) {
	form := url.Values{"scope": {interactiveScopes(s.acct)}}
	var resp struct {
		DeviceCode      string `json:"device_code"`
		UserCode        string `json:"user_code"`
		VerificationURI string `json:"verification_uri"`
		ExpiresIn       int64  `json:"expires_in"`
		Interval        int64  `json:"interval"`
		Message         string `json:"message"`
	}
	if err := s.ep.postJSON(ctx, s.acct.App.DeviceCodeURL(), form, &resp); err != nil {
		return nil, classify(err)
	}
	if resp.DeviceCode == "" || resp.UserCode == "" || resp.VerificationURI == "" {
		return nil, errors.New("device code response lacks device_code, user_code or verification_uri")
	}
	dc := &DeviceCode{
		UserCode:        resp.UserCode,
		VerificationURI: resp.VerificationURI,
		Message:         resp.Message,
		ExpiresAt:       s.now().Add(time.Duration(max(resp.ExpiresIn, 60)) * time.Second),
		Interval:        time.Duration(max(resp.Interval, 1)) * time.Second,
		deviceCode:      resp.DeviceCode,
	}
	return dc, nil
}

// slowDownStep is what RFC 8628 section 3.5 adds to the interval on
// slow_down.
const slowDownStep = 5 * time.Second

// PollDeviceCode waits for the administrator to finish signing in. wait
// sleeps between polls (it returns early with ctx's error on Ctrl-C);
// nil means a timer.
func (s *SignIn) PollDeviceCode(ctx context.Context, dc *DeviceCode, wait func(context.Context, time.Duration) error) (*Credentials, error) {
	if wait == nil {
		wait = sleepCtx
	}
	interval := dc.Interval
	for {
		if err := wait(ctx, interval); err != nil {
			return nil, err
		}
		if !s.now().Before(dc.ExpiresAt) {
			return nil, errDeviceCodeExpired
		}
		form := url.Values{
			"grant_type":  {"urn:ietf:params:oauth:grant-type:device_code"},
			"device_code": {dc.deviceCode},
		}
		tr, err := s.ep.post(ctx, s.acct.App.TokenURL(), form, !s.ep.cred.public())
		if err == nil {
			return s.credentials(tr, "")
		}
		var re *oauth2.RetrieveError
		if !errors.As(err, &re) {
			return nil, classify(err)
		}
		switch re.ErrorCode {
		case "authorization_pending":
		case "slow_down":
			interval += slowDownStep
		case "expired_token":
			return nil, errDeviceCodeExpired
		case "authorization_declined":
			return nil, errors.New("the sign-in was declined at the verification page; run broker login again and approve it")
		case "bad_verification_code":
			return nil, errors.New("the identity platform does not know this device code; run broker login again")
		default:
			return nil, classify(err)
		}
	}
}

var errDeviceCodeExpired = errors.New("the code expired before the sign-in was completed; run broker login again and finish within the time shown")

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// AuthRequest is an authorization code request with PKCE (RFC 7636) in
// progress: the URL to open, and what redeeming its answer needs.
type AuthRequest struct {
	URL         string
	RedirectURI string
	state       string
	verifier    string
}

// AuthCodeRequest builds the authorize URL for redirectURI, which must be
// registered for the app (http://localhost matches any port).
func (s *SignIn) AuthCodeRequest(redirectURI string) *AuthRequest {
	verifier := oauth2.GenerateVerifier()
	state := rand.Text()
	q := url.Values{
		"client_id":             {s.acct.App.ClientID},
		"response_type":         {"code"},
		"redirect_uri":          {redirectURI},
		"response_mode":         {"query"},
		"scope":                 {interactiveScopes(s.acct)},
		"state":                 {state},
		"code_challenge":        {oauth2.S256ChallengeFromVerifier(verifier)},
		"code_challenge_method": {"S256"},
		"login_hint":            {s.acct.LoginUser},
		"prompt":                {"select_account"},
	}
	return &AuthRequest{URL: s.acct.App.AuthURL() + "?" + q.Encode(), RedirectURI: redirectURI, state: state, verifier: verifier}
}

// Redeem reads the address the browser was sent back to, pasted by the
// administrator or received by the loopback listener, checks its state and
// redeems its code.
func (s *SignIn) Redeem(ctx context.Context, req *AuthRequest, redirected string) (*Credentials, error) {
	code, err := req.code(redirected)
	if err != nil {
		return nil, err
	}
	form := url.Values{
		"grant_type":    {"authorization_code"},
		"code":          {code},
		"redirect_uri":  {req.RedirectURI},
		"code_verifier": {req.verifier},
		"scope":         {interactiveScopes(s.acct)},
	}
	tr, err := s.ep.post(ctx, s.acct.App.TokenURL(), form, true)
	if err != nil {
		return nil, classify(err)
	}
	return s.credentials(tr, "")
}

// code extracts the authorization code from the redirect address.
func (req *AuthRequest) code(redirected string) (string, error) {
	redirected = strings.TrimSpace(redirected)
	u, err := url.Parse(redirected)
	if err != nil || !strings.Contains(redirected, "?") {
		return "", errors.New("that is not the address the browser ended on: paste the whole address, starting with http://localhost/?code=")
	}
	q := u.Query()
	if e := q.Get("error"); e != "" {
		desc := firstLine(q.Get("error_description"))
		if c := findAADSTS(desc); c != 0 {
			if expl, ok := explanations[c]; ok {
				return "", fmt.Errorf("sign-in failed: AADSTS%d: %s", c, expl)
			}
		}
		return "", fmt.Errorf("sign-in failed: %s: %s", e, desc)
	}
	if q.Get("state") != req.state {
		return "", errors.New("the address belongs to another sign-in (its state does not match this one): use the URL broker printed last, and paste the address from that sign-in")
	}
	code := q.Get("code")
	if code == "" {
		return "", errors.New("the address holds no code: paste the whole address the browser ended on")
	}
	return code, nil
}

// Password signs in with the user's password (ROPC), which Microsoft is
// retiring and which cannot satisfy MFA.
func (s *SignIn) Password(ctx context.Context, password string) (*Credentials, error) {
	if password == "" {
		return nil, errors.New("empty password")
	}
	tr, err := s.ep.passwordGrant(ctx, s.acct, password, interactiveScopes(s.acct))
	if err != nil {
		return nil, classify(err)
	}
	return s.credentials(tr, password)
}

// passwordGrant is the resource owner password credentials request for
// scope.
func (e endpoint) passwordGrant(ctx context.Context, acct *config.Account, password, scope string) (*tokenResponse, error) {
	form := url.Values{
		"grant_type": {"password"},
		"username":   {acct.LoginUser},
		"password":   {password},
		"scope":      {scope},
	}
	return e.post(ctx, acct.App.TokenURL(), form, !e.cred.public())
}
