package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/mailbroker/broker/broker"
	"github.com/mailbroker/broker/config"
)

func serveCmd(args []string, stdout, stderr io.Writer) error {
	fs, configPath := newCommand("serve", "", stderr)
	dev := fs.Bool("dev", false, "run against an in-process simulated Microsoft 365 with a temporary state directory")
	devListen := fs.String("dev-listen", "127.0.0.1:1143", "IMAP listen `address` for -dev")
	devSMTPListen := fs.String("dev-smtp-listen", "127.0.0.1:1587", "SMTP listen `address` for -dev")
	devPOP3Listen := fs.String("dev-pop3-listen", "127.0.0.1:1110", "POP3 listen `address` for -dev")
	logLevel := fs.String("log-level", "", "log from `level` up: debug, info, warn or error (default: the config's log_level, else info)")
	debug := fs.Bool("debug", false, "same as -log-level debug")
	if pos, err := parseFlags(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return errUsage
	}
	var flagLevel *slog.Level
	if *logLevel != "" {
		l, ok := config.ParseLogLevel(*logLevel)
		if !ok {
			fmt.Fprintf(stderr, "broker serve: -log-level %q: want debug, info, warn or error\n", *logLevel)
			return errUsage
		}
		flagLevel = &l
	} else if *debug {
		l := slog.LevelDebug
		flagLevel = &l
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if *dev {
		level := slog.LevelInfo
		if flagLevel != nil {
			level = *flagLevel
		}
		return serveDev(ctx, *devListen, *devSMTPListen, *devPOP3Listen, stdout, newLogger(stderr, level))
	}
	cfg, err := config.Load(*configPath)
	if err != nil {
		return err
	}
	level := cfg.LogLevel
	if flagLevel != nil {
		level = *flagLevel
	}
	// A reload sets the config's log_level, unless a flag chose it.
	lv := new(slog.LevelVar)
	lv.Set(level)
	log := newLogger(stderr, lv)
	checkRuntimeDirectory(log, controlSocketPath(cfg))
	// The sealing key is read here, before the daemon is assembled, so that
	// a key that cannot be read or made is a configuration error (exit 78)
	// rather than a failure systemd would restart forever.
	key, err := broker.LoadKey(cfg.StateDir)
	if err != nil {
		return &configError{err}
	}
	d, err := newDaemon(cfg, log, broker.Options{Key: key})
	if err != nil {
		return err
	}
	if flagLevel == nil {
		d.logLevel = lv
	}
	return d.run(ctx)
}

// checkRuntimeDirectory warns when systemd made a runtime directory for the
// unit but the control socket is elsewhere: with a state_dir of its own,
// the socket stays next to the database unless control_socket moves it.
func checkRuntimeDirectory(log *slog.Logger, socket string) {
	rd := os.Getenv("RUNTIME_DIRECTORY")
	if rd == "" {
		return
	}
	dir := filepath.Dir(socket)
	for _, d := range strings.Split(rd, ":") {
		if filepath.Clean(d) == dir {
			return
		}
	}
	log.Warn("the control socket is not in the unit's runtime directory; set control_socket to move it there", "control_socket", socket, "runtime_directory", rd)
}
