package broker

// CheckRedirect reports what is wrong with an address that the
// administrator pasted (or that the loopback listener received) for req,
// without redeeming it: not an address, another sign-in's state, no code,
// or the sign-in's own error. `broker login` lets the administrator paste
// again after such a mistake; an error of Redeem after a successful check
// needs a new sign-in.
func (req *AuthRequest) CheckRedirect(redirected string) error {
	_, err := req.code(redirected)
	return err
}
