package config

import "strings"

var clouds = []Cloud{
	{
		Name:              "global",
		Authority:         "https://login.microsoftonline.com",
		IMAPHost:          "outlook.office365.com:993",
		POPHost:           "outlook.office365.com:995",
		SMTPHost:          "smtp.office365.com:587",
		AppResource:       "https://outlook.office365.com",
		DelegatedResource: "https://outlook.office.com",
		GraphResource:     "https://graph.microsoft.com",
	},
	{
		Name:              "usgovhigh",
		Authority:         "https://login.microsoftonline.us",
		IMAPHost:          "outlook.office365.us:993",
		POPHost:           "outlook.office365.us:995",
		SMTPHost:          "smtp.office365.us:587",
		AppResource:       "https://outlook.office365.us",
		DelegatedResource: "https://outlook.office365.us",
		GraphResource:     "https://graph.microsoft.us",
	},
	{
		Name:              "usgovdod",
		Authority:         "https://login.microsoftonline.us",
		IMAPHost:          "outlook-dod.office365.us:993",
		POPHost:           "outlook-dod.office365.us:995",
		SMTPHost:          "outlook-dod.office365.us:587",
		AppResource:       "https://outlook-dod.office365.us",
		DelegatedResource: "https://outlook-dod.office365.us",
		GraphResource:     "https://dod-graph.microsoft.us",
	},
	{
		Name:              "china",
		Authority:         "https://login.partner.microsoftonline.cn",
		IMAPHost:          "partner.outlook.cn:993",
		POPHost:           "partner.outlook.cn:995",
		SMTPHost:          "smtp.partner.outlook.cn:587",
		AppResource:       "https://partner.outlook.cn",
		DelegatedResource: "https://partner.outlook.cn",
		GraphResource:     "https://microsoftgraph.chinacloudapi.cn",
	},
}

// DefaultCloud is the cloud of apps that do not name one.
const DefaultCloud = "global"

// CloudByName returns the named national cloud, or nil. Each call returns a
// fresh copy, so callers cannot alter the table.
func CloudByName(name string) *Cloud {
	for _, c := range clouds {
		if c.Name == name {
			return &c
		}
	}
	return nil
}

func cloudNames() string {
	names := make([]string, len(clouds))
	for i, c := range clouds {
		names[i] = c.Name
	}
	return strings.Join(names, ", ")
}

// AppScope is the scope of app-only (client credentials) tokens, which
// carry every role the app was granted: IMAP.AccessAsApp, SMTP.SendAsApp.
func (c *Cloud) AppScope() string { return c.AppResource + "/.default" }

// GraphScope is the scope that redeems a delegated sign-in for a Microsoft
// Graph token with every permission the user consented to.
func (c *Cloud) GraphScope() string { return c.GraphResource + "/.default" }

// OutlookScope is the same for Exchange Online (Outlook) itself.
func (c *Cloud) OutlookScope() string { return c.DelegatedResource + "/.default" }

// DelegatedScopes are the scopes of delegated tokens: one token serves
// both IMAP and SMTP, and offline_access brings the refresh token.
func (c *Cloud) DelegatedScopes() []string {
	return []string{
		"offline_access",
		c.DelegatedResource + "/IMAP.AccessAsUser.All",
		c.DelegatedResource + "/SMTP.Send",
	}
}
