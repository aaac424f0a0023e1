package m365sim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
)

// Failure is an error answer of the token endpoint, in Entra's shape.
type Failure struct {
	Status      int    // HTTP status; 0 means 400
	Error       string // OAuth 2.0 error, e.g. "invalid_client"
	Codes       []int  // error_codes, e.g. 7000215
	Description string // "AADSTSnnn: text"; trace, correlation ID and time are appended
}

// errorBody keeps Entra's field order, which some log scrapers rely on.
type errorBody struct {
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description"`
	ErrorCodes       []int  `json:"error_codes"`
	Timestamp        string `json:"timestamp"`
	TraceID          string `json:"trace_id"`
	CorrelationID    string `json:"correlation_id"`
	ErrorURI         string `json:"error_uri,omitempty"`
}

const timestampLayout = "2006-01-02 15:04:05Z"

func (e *Entra) writeFailure(w http.ResponseWriter, r *http.Request, f *Failure) {
	status := f.Status
	if status == 0 {
		status = http.StatusBadRequest
	}
	trace := e.traceHeaders(w, r)
	ts := e.now().UTC().Format(timestampLayout)
	body := errorBody{
		Error:            f.Error,
		ErrorDescription: f.Description + "\r\nTrace ID: " + trace.traceID + "\r\nCorrelation ID: " + trace.correlationID + "\r\nTimestamp: " + ts,
		ErrorCodes:       f.Codes,
		Timestamp:        ts,
		TraceID:          trace.traceID,
		CorrelationID:    trace.correlationID,
	}
	if body.ErrorCodes == nil {
		body.ErrorCodes = []int{}
	}
	if len(f.Codes) > 0 {
		body.ErrorURI = errorURI(f.Codes[0])
	}
	writeJSON(w, status, body)
}

func errorURI(code int) string {
	return "https://login.microsoftonline.com/error?code=" + strconv.Itoa(code)
}

type trace struct{ traceID, correlationID string }

// traceHeaders sets the request IDs Entra returns; a client-request-id sent
// by the client becomes the correlation ID, as in Entra.
func (e *Entra) traceHeaders(w http.ResponseWriter, r *http.Request) trace {
	t := trace{traceID: NewGUID(), correlationID: r.Header.Get("client-request-id")}
	if t.correlationID == "" {
		t.correlationID = NewGUID()
	} else {
		w.Header().Set("client-request-id", t.correlationID)
	}
	w.Header().Set("x-ms-request-id", t.traceID)
	return t
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Cache-Control", "no-store, no-cache")
	h.Set("Pragma", "no-cache")
	w.WriteHeader(status)
	w.Write(bytes.TrimSuffix(buf.Bytes(), []byte("\n")))
}

func aadError(status int, oauthErr string, code int, format string, args ...any) *Failure {
	return &Failure{
		Status:      status,
		Error:       oauthErr,
		Codes:       []int{code},
		Description: fmt.Sprintf("AADSTS%d: ", code) + fmt.Sprintf(format, args...),
	}
}

// The conditions below are those Entra reports; texts follow its answers.

func errMethod(method string) *Failure {
	return aadError(400, "invalid_request", 900561, "The endpoint only accepts POST, OPTIONS requests. Received a %s request.", method)
}

func errMissingParam(name string) *Failure {
	return aadError(400, "invalid_request", 900144, "The request body must contain the following parameter: '%s'.", name)
}

func errTenantNotFound(tenant string) *Failure {
	return aadError(400, "invalid_request", 90002, "Tenant '%s' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant.", tenant)
}

func errAppNotFound(clientID, directory string) *Failure {
	return aadError(400, "unauthorized_client", 700016, "Application with identifier '%s' was not found in the directory '%s'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.", clientID, directory)
}

func errNotMultiTenant(clientID string) *Failure {
	return aadError(400, "invalid_request", 50194, "Application '%s' is not configured as a multi-tenant application. Usage of the /common endpoint is not supported for such applications created after '10/15/2018'. Use a tenant-specific endpoint or configure the application to be multi-tenant.", clientID)
}

func errInvalidSecret(clientID string) *Failure {
	return aadError(401, "invalid_client", 7000215, "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '%s'.", clientID)
}

func errSecretRequired() *Failure {
	return aadError(401, "invalid_client", 7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")
}

func errSecretExpired(clientID string) *Failure {
	return aadError(401, "invalid_client", 7000222, "The provided client secret keys for app '%s' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.", clientID)
}

func errPublicClientSecret() *Failure {
	return aadError(401, "invalid_client", 700025, "Client is public so neither 'client_assertion' nor 'client_secret' should be presented.")
}

func errAssertionKey(clientID string) *Failure {
	return aadError(401, "invalid_client", 700027, "The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '%s'.]", clientID)
}

func errUnsupportedGrant(grantType string) *Failure {
	return aadError(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type '%s'.", grantType)
}

func errInvalidScope(scope string) *Failure {
	return aadError(400, "invalid_scope", 70011, "The provided value for the input parameter 'scope' is not valid. The scope '%s' is not valid.", scope)
}

func errMixedResources(scope string) *Failure {
	return aadError(400, "invalid_scope", 28000, "Provided value for the input parameter scope is not valid because it contains more than one resource. Scope %s is not valid.", scope)
}

func errNotDefaultScope(scope string) *Failure {
	return aadError(400, "invalid_scope", 1002012, "The provided value for scope %s is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).", scope)
}

func errResourceNotFound(resource, tenant string) *Failure {
	return aadError(400, "invalid_resource", 500011, "The resource principal named %s was not found in the tenant named %s. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant.", resource, tenant)
}

func errBadPassword() *Failure {
	return aadError(400, "invalid_grant", 50126, "Error validating credentials due to invalid username or password.")
}

func errNoUser(directory string) *Failure {
	return aadError(400, "invalid_grant", 50034, "The user account {EUII Hidden} does not exist in the %s directory. To sign into this application, the account must be added to the directory.", directory)
}

func errMalformedGrant() *Failure {
	return aadError(400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
}

func errGrantClient() *Failure {
	return aadError(400, "invalid_grant", 70000, "Provided grant is invalid or malformed.")
}

func errRevoked(issued, validFrom string) *Failure {
	return aadError(400, "invalid_grant", 50173, "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password. The grant was issued on '%s' and the TokensValidFrom date (before which tokens are not valid) for this user is '%s'.", issued, validFrom)
}

func errRefreshExpired(issued string) *Failure {
	return aadError(400, "invalid_grant", 700082, "The refresh token has expired due to inactivity. The token was issued on %s and was inactive for 90.00:00:00.", issued)
}

func errAuthorizationPending() *Failure {
	return aadError(400, "authorization_pending", 70016, "OAuth 2.0 device flow error. Authorization is pending. Continue polling.")
}

// Entra documents no code of its own for slow_down; RFC 8628 names the error.
func errSlowDown() *Failure {
	return aadError(400, "slow_down", 70016, "OAuth 2.0 device flow error. Polling too frequently; add 5 seconds to the interval.")
}

func errDeviceCodeExpired() *Failure {
	return aadError(400, "expired_token", 70020, "The provided value for the input parameter 'device_code' is not valid. This device code has expired.")
}

func errDeviceDeclined() *Failure {
	return aadError(400, "authorization_declined", 70000, "The request was denied because the user declined to authorize the application.")
}

func errBadDeviceCode() *Failure {
	return aadError(400, "bad_verification_code", 70018, "Invalid verification code due to User typing in wrong user code for device code flow. Authorization is not approved.")
}

func errServer(err error) *Failure {
	return aadError(500, "server_error", 90033, "A transient error has occurred. Please try again. (%v)", err)
}

// Account state (users.go).

func errLocked() *Failure {
	return aadError(400, "invalid_grant", 50053, "The account is locked, you've tried to sign in too many times with an incorrect user ID or password.")
}

func errDisabled() *Failure {
	return aadError(400, "invalid_grant", 50057, "The user account is disabled.")
}

func errPasswordExpired() *Failure {
	return aadError(400, "invalid_grant", 50055, "The password is expired.")
}

func errMFARequired(resourceAppID string) *Failure {
	return aadError(400, "invalid_grant", 50076, "Due to a configuration change made by your administrator, or because you moved to a new location, you must use multi-factor authentication to access '%s'.", resourceAppID)
}

// Refresh token rotation (rotation.go).

func errRefreshReused() *Failure {
	return aadError(400, "invalid_grant", 70008, "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource. (m365sim strict rotation: the refresh token has been used.)")
}

// The authorization endpoint and the authorization code grant
// (authorize.go, authcode.go).

func errNoReplyAddress(clientID string) *Failure {
	return aadError(400, "invalid_request", 500113, "No reply address is registered for the application '%s'.", clientID)
}

func errReplyMismatch(redirectURI, clientID string) *Failure {
	return aadError(400, "invalid_request", 50011, "The redirect URI '%s' specified in the request does not match the redirect URIs configured for the application '%s'. Make sure the redirect URI sent in the request matches one added to your application in the Azure portal. Navigate to https://aka.ms/redirectUriMismatchError to learn more about how to fix this.", redirectURI, clientID)
}

func errResponseType(responseType string) *Failure {
	return aadError(400, "unsupported_response_type", 70005, "response_type '%s' is not enabled for the application.", responseType)
}

func errChallengeMethod(method string) *Failure {
	return aadError(400, "invalid_request", 90023, "Unsupported code_challenge_method '%s': the simulator accepts only S256.", method)
}

func errChallengeSize() *Failure {
	return aadError(400, "invalid_request", 501491, "Invalid size of Code_Challenge parameter.")
}

func errConsentDeclined() *Failure {
	return aadError(400, "access_denied", 65004, "User declined to consent to access the app.")
}

func errLoginRequired() *Failure {
	return aadError(400, "login_required", 50058, "A silent sign-in request was sent but no user is signed in.")
}

func errCodeRedeemed() *Failure {
	return aadError(400, "invalid_grant", 54005, "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.")
}

func errCodeExpired() *Failure {
	return aadError(400, "invalid_grant", 70008, "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.")
}

func errCodeReplyMismatch(got, want string) *Failure {
	return aadError(400, "invalid_grant", 500112, "The reply address '%s' does not match the reply address '%s' provided when requesting Authorization code.", got, want)
}

func errCodeVerifier() *Failure {
	return aadError(400, "invalid_grant", 50148, "The code_verifier does not match the code_challenge supplied in the authorization request for PKCE.")
}

// Client assertions (assertion.go). Texts follow Entra's; for the
// conditions Entra gives no code of its own (replay, both credentials) the
// simulator picks the nearest.

func errTwoCredentials() *Failure {
	return aadError(400, "invalid_request", 90023, "Only one client credential may be presented: both 'client_assertion' and 'client_secret' were sent.")
}

func errAssertionType() *Failure {
	return aadError(400, "invalid_request", 90011, "Unexpected client assertion type.")
}

func errAssertionMalformed(reason string) *Failure {
	return aadError(401, "invalid_client", 50027, "JWT token is invalid or malformed. (%s)", reason)
}

func errAssertionAlg(alg string) *Failure {
	return aadError(401, "invalid_client", 5002738, "Invalid JWT token. '%s' is not a supported signature algorithm. Supported signing algorithms are: 'RS256, PS256'", alg)
}

func errAssertionSignature(thumbprint, start, end string) *Failure {
	return aadError(401, "invalid_client", 700027, "Client assertion contains an invalid signature. [Reason - The provided signature value did not match the expected signature value., Thumbprint of key used by client: '%s', Found key 'Start=%s, End=%s']", thumbprint, start, end)
}

func errAssertionCertExpired(thumbprint, start, end string) *Failure {
	return aadError(401, "invalid_client", 700027, "Client assertion contains an invalid signature. [Reason - The key used is expired., Thumbprint of key used by client: '%s', Found key 'Start=%s, End=%s']", thumbprint, start, end)
}

func errAssertionIssuer() *Failure {
	return aadError(401, "invalid_client", 700021, "Client assertion application identifier doesn't match 'client_id' parameter. Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials .")
}

func errAssertionAudience() *Failure {
	return aadError(401, "invalid_client", 700023, "Client assertion audience claim does not match Realm issuer. Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials .")
}

func errAssertionTime(now, from, until string) *Failure {
	return aadError(401, "invalid_client", 700024, "Client assertion is not within its valid time range. Current time: %s, assertion valid from %s, expiry time of assertion %s. Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials .", now, from, until)
}

func errAssertionReplay(jti string) *Failure {
	return aadError(401, "invalid_client", 50027, "JWT token is invalid or malformed. (The client assertion with jti '%s' was presented before: replay.)", jti)
}
