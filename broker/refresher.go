package broker

import "time"

// maxIdle bounds the refresher's sleep, so that a wall-clock jump (suspend,
// NTP step) is noticed within it.
const maxIdle = time.Minute

// expiryCheckInterval paces the log's warnings of expiring credentials.
const expiryCheckInterval = 24 * time.Hour

// warnExpiries logs each credential that has expired or expires soon.
func (m *tokens) warnExpiries(now time.Time) {
	for _, a := range m.snapshot() {
		sp := a.sp()
		for _, c := range a.credentials(now) {
			if c.Warning != "" {
				m.log.Warn("credential expiring", "accounts", sp.mailboxes, "app", sp.app.Name, "credential", c.Kind, "expires", c.Expires.Format(time.DateOnly), "advice", c.Warning)
			}
		}
	}
}

// refresh runs until the broker closes, requesting tokens ahead of expiry
// and retrying failures when their time comes. Decisions use the broker's
// clock; the timer only says when to look again.
func (m *tokens) refresh() {
	timer := time.NewTimer(maxIdle)
	defer timer.Stop()
	for {
		timer.Reset(m.pass())
		if m.onPass != nil {
			m.onPass()
		}
		select {
		case <-m.life.ctx.Done():
			return
		case <-m.wake:
		case <-timer.C:
		case reply := <-m.ping:
			close(reply)
		}
	}
}

// pass starts every due request and returns how long until the next is due.
func (m *tokens) pass() time.Duration {
	now := m.now()
	if now.Sub(m.expiryChecked) >= expiryCheckInterval {
		m.expiryChecked = now
		m.warnExpiries(now)
	}
	wait := maxIdle
	for _, a := range m.snapshot() {
		a.mu.Lock()
		if due, ok := a.dueLocked(now); ok {
			if due.After(now) {
				wait = min(wait, due.Sub(now))
			} else {
				m.startLocked(a)
			}
		}
		a.mu.Unlock()
	}
	return wait
}
