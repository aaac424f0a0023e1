package broker

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"
)

// explanations says, for each identity-platform error an administrator is
// likely to meet, what is wrong and which admin step fixes it.
var explanations = map[int]string{
	50011:   "The redirect URI does not match one registered for the app; add it exactly (http://localhost matches any port) in Entra admin center > App registrations > <app> > Authentication.",
	500113:  "The app has no reply address registered; add a redirect URI in Entra admin center > App registrations > <app> > Authentication.",
	65001:   "Admin consent for the app's permissions is missing; grant it in Entra admin center > App registrations > <app> > API permissions > Grant admin consent.",
	650057:  "The requested resource is not among the app's permissions; add the Office 365 Exchange Online permissions (IMAP.AccessAsApp and SMTP.SendAsApp for app-only) in Entra admin center > App registrations > <app> > API permissions, then grant admin consent.",
	7000215: "The client secret is wrong — often the secret's ID was pasted instead of its Value; create a new secret in Entra admin center > App registrations > <app> > Certificates & secrets and put its Value in client_secret_file.",
	7000222: "The client secret has expired; create a new secret in Entra admin center > App registrations > <app> > Certificates & secrets and put its Value in client_secret_file.",
	7000218: "Public client flows are off for the app, so it must authenticate; turn on 'Allow public client flows' in Entra admin center > App registrations > <app> > Authentication (device code and password sign-ins of a public client need it), or set client_secret_file or client_certificate_file for the app.",
	700025:  "The app is a public client and must not send a secret; remove client_secret_file for this app, or disable 'Allow public client flows' in Entra admin center > App registrations > <app> > Authentication.",
	700016:  "The app was not found in this tenant — wrong client_id, wrong tenant or wrong cloud; compare client_id and tenant with the Overview page in Entra admin center > App registrations > <app>, and check the app's cloud.",
	90002:   "The tenant was not found; set tenant to the Directory (tenant) ID or a verified domain, and check that the app's cloud matches the tenant's.",
	50194:   "The app is single-tenant but was used with the common endpoint; set tenant to the Directory (tenant) ID or a verified domain instead of common.",
	70011:   "The requested scope is invalid; app-only tokens need exactly https://outlook.office365.com/.default (delegated ones the outlook.office.com IMAP/SMTP scopes), so check the account's flow and the app's cloud.",
	28000:   "The request mixed scopes of different resources (such as Graph and Outlook); request the Outlook scopes alone and check the scopes configured for this account.",
	700022:  "The scope is invalid or mixes resources; app-only requests take a single <resource>/.default scope, so check the account's scopes and the app's cloud.",
	50076:   "Multi-factor authentication is required, which the password flow cannot do; switch the account to the device_code or auth_code flow, or exempt it in Conditional Access.",
	50079:   "The user must enrol in multi-factor authentication, which the password flow cannot do; switch the account to the device_code or auth_code flow.",
	50126:   "Wrong username or password for the password flow; run broker login for the account and enter the user's current password.",
	50055:   "The user's password has expired; the user must change it (or an admin reset it in Entra admin center > Users), then run broker login for the account with the new password.",
	50057:   "The user account is disabled; enable it in Entra admin center > Users.",
	50053:   "The account is locked after too many failed sign-ins; wait for the lockout to end and find the source of the failures in Entra admin center > Sign-in logs.",
	53003:   "Conditional Access blocked the sign-in; find the policy in Entra admin center > Sign-in logs and exempt this app or allow broker's network location.",
	530035:  "Security defaults blocked the sign-in; replace security defaults with Conditional Access policies, or use a flow that can satisfy MFA (device_code or auth_code).",
	70043:   "The refresh token expired under a Conditional Access sign-in frequency policy; run broker login for the account, or relax sign-in frequency for this app.",
	700082:  "The refresh token expired after 90 days without use; run broker login for the account.",
	70008:   "The refresh token or authorization code has expired; run broker login for the account.",
	50173:   "The grant was revoked, typically because the user's password changed or an administrator revoked sessions; run broker login for the account.",
	54005:   "The authorization code was already redeemed (the address was pasted twice, or is from an earlier sign-in); run broker login again.",
	50148:   "The PKCE code_verifier does not match the sign-in it came from; run broker login again and paste the address of that same sign-in.",
	65004:   "The user declined to consent to the app's permissions; sign in again and accept, or have an admin grant consent in Entra admin center > App registrations > <app> > API permissions.",
	700027:  "The client assertion was not accepted: the certificate is not registered for the app, or has expired; upload client_certificate_file in Entra admin center > App registrations > <app> > Certificates & secrets > Certificates.",
	700024:  "The client assertion is outside its valid time range; check that this server's clock is right (NTP).",
	50027:   "The client assertion is malformed; check client_certificate_file and client_key_file.",
	65002:   "Consent between the app and Microsoft's first-party API is not configured; use an app registration of your own tenant.",
	50196:   "The identity platform saw the same request too often (loop detected) and is refusing it for now; broker backs off and retries.",
}

// transientCodes are AADSTS codes worth retrying without admin action.
var transientCodes = map[int]bool{50196: true}

// TokenError is a failed token request, classified and explained.
type TokenError struct {
	// Permanent means an administrator must act; retrying soon is pointless.
	Permanent bool
	// NeedsLogin means the delegated sign-in is gone (revoked, expired, or
	// never made): only `broker login` brings it back. It implies Permanent.
	NeedsLogin bool
	// Code is the AADSTS number, 0 when there is none.
	Code int
	// Explanation is one sentence: what is wrong and what fixes it.
	Explanation            string
	TraceID, CorrelationID string
	Err                    error

	// retryAfter is the server's Retry-After, if any.
	retryAfter time.Duration
}

// Error is one line. It leaves out Err: oauth2.RetrieveError carries the
// whole multi-line response body.
func (e *TokenError) Error() string {
	var b strings.Builder
	b.WriteString("token request failed: ")
	if e.Code != 0 {
		fmt.Fprintf(&b, "AADSTS%d: ", e.Code)
	}
	b.WriteString(oneLine(e.Explanation))
	if e.TraceID != "" || e.CorrelationID != "" {
		fmt.Fprintf(&b, " (trace_id=%s correlation_id=%s)", oneLine(e.TraceID), oneLine(e.CorrelationID))
	}
	return b.String()
}

func (e *TokenError) Unwrap() error { return e.Err }

// same reports whether two errors would explain the same thing to an admin.
func (e *TokenError) same(o *TokenError) bool {
	return e != nil && o != nil && e.Permanent == o.Permanent && e.NeedsLogin == o.NeedsLogin && e.Code == o.Code && e.Explanation == o.Explanation
}

// errorBody is the identity platform's JSON error response.
type errorBody struct {
	Error         string `json:"error"`
	Description   string `json:"error_description"`
	Codes         []int  `json:"error_codes"`
	TraceID       string `json:"trace_id"`
	CorrelationID string `json:"correlation_id"`
}

// decodeErrorBody reads an error response. When it is not the expected JSON
// (a proxy's HTML page, say) it still finds an AADSTS number in the text.
// ok reports whether body was an OAuth error object.
func decodeErrorBody(body []byte) (eb errorBody, ok bool) {
	if err := json.Unmarshal(body, &eb); err != nil || eb.Error == "" {
		eb = errorBody{}
		if c := findAADSTS(string(body)); c != 0 {
			eb.Codes = []int{c}
		}
		return eb, false
	}
	if len(eb.Codes) == 0 {
		if c := findAADSTS(eb.Description); c != 0 {
			eb.Codes = []int{c}
		}
	}
	return eb, true
}

// code picks the most useful AADSTS number: the first one explained.
func (eb *errorBody) code() int {
	for _, c := range eb.Codes {
		if _, ok := explanations[c]; ok {
			return c
		}
	}
	if len(eb.Codes) > 0 && eb.Codes[0] > 0 {
		return eb.Codes[0]
	}
	return 0
}

// findAADSTS returns the number of the first "AADSTSnnn" in s, or 0.
func findAADSTS(s string) int {
	for {
		i := strings.Index(s, "AADSTS")
		if i < 0 {
			return 0
		}
		s = s[i+len("AADSTS"):]
		n := 0
		for n < len(s) && n < 9 && s[n] >= '0' && s[n] <= '9' {
			n++
		}
		if n > 0 {
			c, _ := strconv.Atoi(s[:n])
			return c
		}
	}
}

// classify turns any error from a token request into a *TokenError.
func classify(err error) *TokenError {
	var te *TokenError
	if errors.As(err, &te) {
		return te
	}
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		// No answer from the endpoint: network, timeout, TLS, or a
		// malformed success response. All worth retrying.
		return &TokenError{Err: err, Explanation: "Cannot get a token from the identity platform (" + oneLine(err.Error()) +
			"); broker retries, but if this persists check DNS, firewall and proxy settings for outbound HTTPS."}
	}
	status := 0
	if re.Response != nil {
		status = re.Response.StatusCode
	}
	eb, isOAuth := decodeErrorBody(re.Body)
	te = &TokenError{Err: err, Code: eb.code(), TraceID: eb.TraceID, CorrelationID: eb.CorrelationID}
	switch {
	case status >= 500 || status == http.StatusTooManyRequests || eb.Error == "temporarily_unavailable" || transientCodes[te.Code]:
		te.retryAfter = retryAfter(re.Response)
	case eb.Error == "invalid_grant":
		// The refresh token, code or password no longer signs the user in.
		te.Permanent, te.NeedsLogin = true, true
	default:
		te.Permanent = true
	}
	te.Explanation = explain(te, status, eb, isOAuth)
	return te
}

var (
	errNotSignedIn = &TokenError{Permanent: true, NeedsLogin: true,
		Explanation: "The account has not been signed in yet; run broker login for it."}
	errLoggedOut = &TokenError{Permanent: true, NeedsLogin: true,
		Explanation: "The account was logged out (broker logout); run broker login for it."}
)

func explain(te *TokenError, status int, eb errorBody, isOAuth bool) string {
	if s, ok := explanations[te.Code]; ok {
		return s
	}
	if !te.Permanent {
		if status == http.StatusTooManyRequests {
			return "The identity platform is throttling broker (HTTP 429); broker backs off and retries."
		}
		return fmt.Sprintf("The identity platform is temporarily unavailable (HTTP %d); broker backs off and retries.", status)
	}
	if !isOAuth {
		return fmt.Sprintf("The token endpoint answered HTTP %d without an OAuth error; check the app's tenant and cloud, and any outbound proxy.", status)
	}
	desc := firstLine(eb.Description)
	if te.Code != 0 {
		desc = strings.TrimPrefix(desc, fmt.Sprintf("AADSTS%d: ", te.Code))
		return fmt.Sprintf("The identity platform refused the token request (%s: %s); see https://login.microsoftonline.com/error?code=%d.", eb.Error, desc, te.Code)
	}
	return fmt.Sprintf("The identity platform refused the token request (%s: %s).", eb.Error, desc)
}

func retryAfter(resp *http.Response) time.Duration {
	if resp == nil {
		return 0
	}
	s, err := strconv.Atoi(strings.TrimSpace(resp.Header.Get("Retry-After")))
	if err != nil || s <= 0 {
		return 0
	}
	return min(time.Duration(s)*time.Second, maxBackoff)
}

// firstLine keeps the headline of an Entra description, whose later lines
// carry trace and correlation ids and a timestamp.
func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return strings.TrimSpace(s)
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
