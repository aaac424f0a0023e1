package main

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/mailbroker/broker/broker"
	"github.com/mailbroker/broker/config"
)

func serveCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", config.DefaultPath, "configuration `file`")
	dev := fs.Bool("dev", false, "run against an in-process simulated Microsoft 365 with a temporary state directory")
	devListen := fs.String("dev-listen", "127.0.0.1:1143", "IMAP listen `address` for -dev")
	devSMTPListen := fs.String("dev-smtp-listen", "127.0.0.1:1587", "SMTP listen `address` for -dev")
	debug := fs.Bool("debug", false, "log debug messages")
	if pos, err := parseFlags(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return errUsage
	}
	log := newLogger(stderr, *debug)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if *dev {
		return serveDev(ctx, *devListen, *devSMTPListen, stdout, log)
	}
	cfg, err := config.Load(*configPath)
	if err != nil {
		return err
	}
	d, err := newDaemon(cfg, log, broker.Options{})
	if err != nil {
		return err
	}
	return d.run(ctx)
}

func newLogger(w io.Writer, debug bool) *slog.Logger {
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	// Under systemd the journal adds its own timestamps.
	replace := func(groups []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey && len(groups) == 0 && os.Getenv("JOURNAL_STREAM") != "" {
			return slog.Attr{}
		}
		return a
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level, ReplaceAttr: replace}))
}
