package imap

// ExplainRefusal says what an administrator should do about Exchange
// Online's refusal of an IMAP command (the text after NO or BAD), as the
// proxy logs it: broker doctor prints the same advice. temporary: the
// refusal is not about the account and passes by itself. ok is false for
// a text it does not know.
func ExplainRefusal(text string) (advice string, temporary, ok bool) {
	e, ok := explain(text)
	return e.advice, e.temporary, ok
}
