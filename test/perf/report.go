package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"
)

// targetKind says what a target compares.
type targetKind string

const (
	atLeastRatio targetKind = "ratio>=" // broker/direct at least Value
	atMostRatio  targetKind = "ratio<=" // broker/direct at most Value
	below        targetKind = "broker<" // broker's figure below Value
	atMost       targetKind = "broker<="
	equal        targetKind = "broker=="
)

type target struct {
	Kind  targetKind `json:"kind"`
	Value float64    `json:"value"`
	Unit  string     `json:"unit,omitempty"` // of Value when it is no ratio
}

func (t target) String() string {
	switch t.Kind {
	case atLeastRatio:
		return fmt.Sprintf("≥ %.2f×", t.Value)
	case atMostRatio:
		return fmt.Sprintf("≤ %.2f×", t.Value)
	case below:
		return "< " + number(t.Value) + " " + t.Unit
	case atMost:
		return "≤ " + number(t.Value) + " " + t.Unit
	case equal:
		return "= " + number(t.Value) + " " + t.Unit
	}
	return string(t.Kind)
}

// row is one line of the report: a figure through broker, the same figure
// of the direct path where there is one, and the target.
type row struct {
	Case   string   `json:"case"`
	What   string   `json:"what"`
	Unit   string   `json:"unit"`
	Broker *float64 `json:"broker,omitempty"`
	Direct *float64 `json:"direct,omitempty"`
	Ratio  *float64 `json:"ratio,omitempty"` // broker/direct
	Target target   `json:"target"`
	OK     *bool    `json:"ok,omitempty"` // nil: not measured (an error)
	Note   string   `json:"note,omitempty"`
	Error  string   `json:"error,omitempty"`
	// Raw holds the figures behind the row: each round, each path.
	Raw map[string]any `json:"raw,omitempty"`
}

func ptr(f float64) *float64 { return &f }

// judge fills Ratio and OK from the figures.
func (r *row) judge() {
	if r.Error != "" || r.Broker == nil {
		r.OK = nil
		return
	}
	if r.Direct != nil && *r.Direct > 0 {
		r.Ratio = ptr(*r.Broker / *r.Direct)
	}
	var ok bool
	switch r.Target.Kind {
	case atLeastRatio, atMostRatio:
		if r.Ratio == nil {
			return
		}
		if r.Target.Kind == atLeastRatio {
			ok = *r.Ratio >= r.Target.Value
		} else {
			ok = *r.Ratio <= r.Target.Value
		}
	case below:
		ok = *r.Broker < r.Target.Value
	case atMost:
		ok = *r.Broker <= r.Target.Value
	case equal:
		ok = *r.Broker == r.Target.Value
	}
	r.OK = &ok
}

// done records err, if any, and judges the figures.
func (r *row) done(err error) *row {
	if err != nil {
		r.Error = err.Error()
	}
	r.judge()
	return r
}

// number formats a figure with about three significant digits.
func number(f float64) string {
	switch a := math.Abs(f); {
	case f == math.Trunc(f) && a < 1e6:
		return fmt.Sprintf("%.0f", f)
	case a >= 100:
		return fmt.Sprintf("%.0f", f)
	case a >= 10:
		return fmt.Sprintf("%.1f", f)
	}
	return fmt.Sprintf("%.2f", f)
}

func cell(f *float64) string {
	if f == nil {
		return "—"
	}
	return number(*f)
}

func (r *row) verdict() string {
	switch {
	case r.Error != "":
		return "error"
	case r.OK == nil:
		return "—"
	case *r.OK:
		return "pass"
	}
	return "miss"
}

// writeTable prints the rows as a table, then each row's note or error.
func writeTable(w io.Writer, rows []*row) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "case\twhat\tunit\tbroker\tdirect\tratio\ttarget\tok\t")
	for _, r := range rows {
		ratio := "—"
		if r.Ratio != nil {
			ratio = fmt.Sprintf("%.2f×", *r.Ratio)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.Case, r.What, r.Unit, cell(r.Broker), cell(r.Direct), ratio, r.Target, r.verdict())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range rows {
		if r.Note != "" {
			fmt.Fprintf(w, "  %s: %s\n", r.Case, r.Note)
		}
		if r.Error != "" {
			fmt.Fprintf(w, "  %s: error: %s\n", r.Case, r.Error)
		}
	}
	return nil
}

// machine describes where the figures came from.
type machine struct {
	CPUs       int       `json:"nproc"`
	CPUModel   string    `json:"cpu_model"`
	MemoryMiB  int64     `json:"memory_mib"`
	Kernel     string    `json:"kernel"`
	GoVersion  string    `json:"go_version"`
	Commit     string    `json:"git_commit"`
	Broker     string    `json:"broker_version"`
	Dovecot    string    `json:"dovecot_version,omitempty"`
	Postfix    string    `json:"postfix_version,omitempty"`
	LoadStart  string    `json:"loadavg_start"`
	LoadEnd    string    `json:"loadavg_end,omitempty"`
	NoFile     uint64    `json:"rlimit_nofile"`
	Started    time.Time `json:"started"`
	DurationS  float64   `json:"duration_s,omitempty"`
	Hostname   string    `json:"hostname"`
	Parameters string    `json:"parameters"`
}

func machineInfo(root string) machine {
	m := machine{
		CPUs:      runtime.NumCPU(),
		GoVersion: runtime.Version(),
		Started:   time.Now().UTC(),
		LoadStart: loadavg(),
	}
	m.Hostname, _ = os.Hostname()
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		if kib, err := statusKiB(data, "MemTotal:"); err == nil {
			m.MemoryMiB = int64(kib >> 20)
		}
	}
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(data))
	}
	m.Commit = gitCommit(root)
	m.Dovecot = firstLine(exec.Command("dovecot", "--version").Output())
	if m.Dovecot == "" {
		m.Dovecot = firstLine(exec.Command("/usr/sbin/dovecot", "--version").Output())
	}
	m.Postfix = strings.TrimPrefix(firstLine(exec.Command("/usr/sbin/postconf", "-dh", "mail_version").Output()), "mail_version = ")
	return m
}

func loadavg() string {
	data, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

func gitCommit(root string) string {
	cmd := exec.Command("git", "rev-parse", "HEAD")
	cmd.Dir = root
	commit := firstLine(cmd.Output())
	if commit == "" {
		return "unknown"
	}
	cmd = exec.Command("git", "status", "--porcelain", "--untracked-files=no")
	cmd.Dir = root
	if out, err := cmd.Output(); err == nil && len(strings.TrimSpace(string(out))) > 0 {
		commit += "-dirty"
	}
	return commit
}

func firstLine(out []byte, err error) string {
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

// report is the JSON file.
type report struct {
	Machine  machine   `json:"machine"`
	Rows     []*row    `json:"rows"`
	Verified *verifier `json:"verified,omitempty"`
}

func writeJSON(path string, rep *report) error {
	data, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}
