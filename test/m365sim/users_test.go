package m365sim

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestPasswordGrantAccountState(t *testing.T) {
	tests := []struct {
		name     string
		update   func(*User)
		password string
		wantCode int
	}{
		{"MFA required", func(u *User) { u.MFARequired = true }, alicePass, 50076},
		{"password expired", func(u *User) { u.PasswordExpires = time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC) }, alicePass, 50055},
		{"disabled", func(u *User) { u.Disabled = true }, alicePass, 50057},
		{"disabled, wrong password", func(u *User) { u.Disabled = true }, "wrong", 50126},
		{"locked", func(u *User) { u.Locked = true }, alicePass, 50053},
		{"locked, wrong password", func(u *User) { u.Locked = true }, "wrong", 50053},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			if err := f.e.UpdateUser(domain, alice, tt.update); err != nil {
				t.Fatalf("UpdateUser: %v", err)
			}
			status, eb := f.tokenError(t, domain, ropc(alice, tt.password, userScope))
			checkError(t, status, eb, 400, "invalid_grant", tt.wantCode)
		})
	}
	f := newFixture(t)
	f.e.UpdateUser(domain, alice, func(u *User) { u.MFARequired = true })
	_, eb := f.tokenError(t, domain, ropc(alice, alicePass, userScope))
	if !strings.Contains(eb.ErrorDescription, "'00000002-0000-0ff1-ce00-000000000000'") {
		t.Fatalf("MFA error names no Exchange Online: %q", eb.ErrorDescription)
	}
	if err := f.e.UpdateUser(domain, "carol@contoso.onmicrosoft.com", func(*User) {}); err == nil {
		t.Fatalf("UpdateUser of an unknown user: got nil, want an error")
	}
}

func TestPasswordExpiryClaims(t *testing.T) {
	f := newFixture(t)
	expires := f.clock.Now().Add(14 * 24 * time.Hour)
	f.e.UpdateUser(domain, alice, func(u *User) { u.PasswordExpires = expires })
	tr := f.token(t, domain, ropc(alice, alicePass, userScope+" openid"))
	var id map[string]any
	decodePart(t, strings.Split(tr.IDToken, ".")[1], &id)
	iat := int64(id["iat"].(float64))
	if want := strconv.FormatInt(expires.Unix()-iat, 10); id["pwd_exp"] != want || id["pwd_url"] != changePasswordURL {
		t.Fatalf("id token: got pwd_exp %v pwd_url %v, want %s %s", id["pwd_exp"], id["pwd_url"], want, changePasswordURL)
	}
	// Without an expiry, neither claim.
	tr = f.token(t, domain, ropc(bob, "bob's password", userScope+" openid"))
	id = nil
	decodePart(t, strings.Split(tr.IDToken, ".")[1], &id)
	if _, ok := id["pwd_exp"]; ok {
		t.Fatalf("id token without password expiry: got pwd_exp %v", id["pwd_exp"])
	}
}

func TestPasswordChangeRevokes(t *testing.T) {
	f := newFixture(t)
	rt := f.token(t, domain, ropc(alice, alicePass, userScope)).RefreshToken
	bobRT := f.token(t, domain, ropc(bob, "bob's password", userScope)).RefreshToken
	f.e.UpdateUser(domain, alice, func(u *User) { u.MFARequired = false }) // no password change
	f.token(t, domain, refresh(rt))

	f.e.UpdateUser(domain, alice, func(u *User) { u.Password = "new password" })
	status, eb := f.tokenError(t, domain, refresh(rt))
	checkError(t, status, eb, 400, "invalid_grant", 50173)
	status, eb = f.tokenError(t, domain, ropc(alice, alicePass, userScope))
	checkError(t, status, eb, 400, "invalid_grant", 50126)
	f.token(t, domain, refresh(f.token(t, domain, ropc(alice, "new password", userScope)).RefreshToken))
	f.token(t, domain, refresh(bobRT))
}

func TestRefreshAccountState(t *testing.T) {
	f := newFixture(t)
	rt := f.token(t, domain, ropc(alice, alicePass, userScope)).RefreshToken
	// Lockout, MFA and an expired password stop sign-ins, not refreshes.
	f.e.UpdateUser(domain, alice, func(u *User) {
		u.Locked, u.MFARequired, u.PasswordExpires = true, true, f.clock.Now()
	})
	rt = f.token(t, domain, refresh(rt)).RefreshToken
	f.e.UpdateUser(domain, alice, func(u *User) { u.Disabled = true })
	status, eb := f.tokenError(t, domain, refresh(rt))
	checkError(t, status, eb, 400, "invalid_grant", 50057)
	f.e.UpdateUser(domain, alice, func(u *User) { u.Disabled = false })
	f.token(t, domain, refresh(rt))
}

func TestExpireRefreshTokens(t *testing.T) {
	f := newFixture(t)
	rt := f.token(t, domain, ropc(alice, alicePass, userScope)).RefreshToken
	rt2 := f.token(t, domain, refresh(rt)).RefreshToken
	bobRT := f.token(t, domain, ropc(bob, "bob's password", userScope)).RefreshToken
	if err := f.e.ExpireRefreshTokens(domain, alice); err != nil {
		t.Fatalf("ExpireRefreshTokens: %v", err)
	}
	for _, tok := range []string{rt, rt2} {
		status, eb := f.tokenError(t, domain, refresh(tok))
		checkError(t, status, eb, 400, "invalid_grant", 700082)
	}
	f.token(t, domain, refresh(bobRT))
	f.token(t, domain, refresh(f.token(t, domain, ropc(alice, alicePass, userScope)).RefreshToken))
	if err := f.e.ExpireRefreshTokens(domain, "carol@contoso.onmicrosoft.com"); err == nil {
		t.Fatalf("ExpireRefreshTokens of an unknown user: got nil, want an error")
	}
}

// Interactive sign-ins pass MFA; a disabled or locked account cannot
// approve a device code.
func TestDeviceCodeAccountState(t *testing.T) {
	f := newFixture(t)
	f.e.UpdateUser(domain, alice, func(u *User) { u.MFARequired = true })
	f.e.UpdateUser(domain, bob, func(u *User) { u.Disabled = true })
	da, err := f.oauth2Config(publicID).DeviceAuth(context.Background())
	if err != nil {
		t.Fatalf("DeviceAuth: %v", err)
	}
	var se *SignInError
	if err := f.e.ApproveDeviceCode(da.UserCode, bob); !errors.As(err, &se) || se.Code != 50057 {
		t.Fatalf("approving as a disabled user: got %v, want a SignInError with AADSTS50057", err)
	}
	if err := f.e.ApproveDeviceCode(da.UserCode, alice); err != nil {
		t.Fatalf("ApproveDeviceCode with MFA required: %v", err)
	}
	tr := f.token(t, domain, poll(publicID, da.DeviceCode))
	var at map[string]any
	decodePart(t, strings.Split(tr.AccessToken, ".")[1], &at)
	if amr, _ := at["amr"].([]any); len(amr) != 2 || amr[0] != "pwd" || amr[1] != "mfa" {
		t.Fatalf("amr: got %v, want [pwd mfa]", at["amr"])
	}
	// The refresh token carries the sign-in's amr on.
	decodePart(t, strings.Split(f.token(t, domain, refresh(tr.RefreshToken)).AccessToken, ".")[1], &at)
	if amr, _ := at["amr"].([]any); len(amr) != 2 {
		t.Fatalf("amr after refresh: got %v, want [pwd mfa]", at["amr"])
	}
}
