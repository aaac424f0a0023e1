package test

import (
	"bufio"
	"context"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestPOP3DevMode runs serve -dev and the POP3 curl command it prints.
func TestPOP3DevMode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, brokerBin, "serve", "-dev", "-dev-listen", "127.0.0.1:0",
		"-dev-smtp-listen", "127.0.0.1:0", "-dev-pop3-listen", "127.0.0.1:0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(interruptSignal)
		cmd.Wait()
	}()
	popRE := regexp.MustCompile(`^\s+(curl .*'pop3://[^']+/1')$`)
	sc := bufio.NewScanner(stdout)
	var curl string
	for curl == "" && sc.Scan() {
		if m := popRE.FindStringSubmatch(sc.Text()); m != nil {
			curl = m[1]
		}
	}
	if curl == "" {
		t.Fatal("serve -dev printed no curl command for POP3")
	}
	go func() {
		for sc.Scan() {
		}
	}()
	out, err := exec.CommandContext(ctx, "sh", "-c", curl).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", curl, err, out)
	}
	if !strings.Contains(string(out), "Subject: ") {
		t.Fatalf("the printed POP3 curl command's output: %q", out)
	}
}
