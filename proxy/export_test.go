package proxy

// SocketQuiet exports socketQuiet to the tests of package proxy_test.
var SocketQuiet = socketQuiet

// Dialing returns how many connections are being dialled now.
func (p *WarmPool) Dialing() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dialing
}
