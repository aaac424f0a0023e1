package broker

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/mailbroker/broker/config"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// token is one account's token set. It is what is sealed into the store.
type token struct {
	AccessToken  string    `json:"access_token"`
	Expiry       time.Time `json:"expiry"`
	RefreshToken string    `json:"refresh_token,omitempty"`
	Scope        string    `json:"scope,omitempty"`
	// Obtained is when the request was sent: the base of the lifetime, by
	// the broker's clock.
	Obtained time.Time `json:"obtained"`
}

// lifetime is how long the token was issued for.
func (t *token) lifetime() time.Duration { return t.Expiry.Sub(t.Obtained) }

// grant obtains tokens for one account. ctx carries the HTTP client
// (oauth2.HTTPClient) and bounds the request; now is the broker's clock at
// the time of sending, the base for expires_in.
type grant interface {
	token(ctx context.Context, now time.Time) (*token, error)
}

// clientCredentials is the app-only flow.
type clientCredentials struct {
	cfg clientcredentials.Config
}

func newClientCredentials(app *config.App) *clientCredentials {
	return &clientCredentials{cfg: clientcredentials.Config{
		ClientID:     app.ClientID,
		ClientSecret: app.ClientSecret,
		TokenURL:     app.TokenURL(),
		Scopes:       []string{app.Cloud.AppScope()},
		AuthStyle:    oauth2.AuthStyleInParams,
	}}
}

func (g *clientCredentials) token(ctx context.Context, now time.Time) (*token, error) {
	t, err := g.cfg.Token(ctx)
	if err != nil {
		return nil, err
	}
	return fromOAuth2(t, now)
}

// fromOAuth2 uses expires_in against the broker's clock: x/oauth2's Expiry
// is based on time.Now, which is not the clock the broker decides with.
func fromOAuth2(t *oauth2.Token, now time.Time) (*token, error) {
	if t.AccessToken == "" {
		return nil, errors.New("token response has no access_token")
	}
	lifetime := expiresIn(t.Extra("expires_in"))
	if lifetime == 0 && !t.Expiry.IsZero() {
		lifetime = time.Until(t.Expiry)
	}
	if lifetime <= 0 {
		return nil, errors.New("token response has no usable expires_in")
	}
	scope, _ := t.Extra("scope").(string)
	return &token{
		AccessToken:  t.AccessToken,
		Expiry:       now.Add(lifetime),
		RefreshToken: t.RefreshToken,
		Scope:        scope,
		Obtained:     now,
	}, nil
}

// expiresIn reads expires_in as JSON number or, as some servers send it,
// string.
func expiresIn(v any) time.Duration {
	var secs float64
	switch v := v.(type) {
	case float64:
		secs = v
	case string:
		secs, _ = strconv.ParseFloat(v, 64)
	}
	if secs <= 0 || secs > 1e9 {
		return 0
	}
	return time.Duration(secs) * time.Second
}
