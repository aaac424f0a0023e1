package main

import (
	"fmt"
	"slices"
)

// series collects one figure per round and path.
type series struct {
	Direct []float64 `json:"direct"`
	Broker []float64 `json:"broker"`
}

func (s *series) add(path string, v float64) {
	if path == "direct" {
		s.Direct = append(s.Direct, v)
	} else {
		s.Broker = append(s.Broker, v)
	}
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// fill reports the medians of the rounds.
func (r *row) fill(s series) {
	if len(s.Broker) > 0 {
		r.Broker = ptr(median(s.Broker))
	}
	if len(s.Direct) > 0 {
		r.Direct = ptr(median(s.Direct))
	}
	if r.Raw == nil {
		r.Raw = map[string]any{}
	}
	r.Raw["rounds"] = s
}

// eachRound runs both paths once per round, alternating which goes
// first, so that the machine's noise falls on both.
func eachRound(rounds int, run func(path string) error) error {
	for i := range rounds {
		order := []string{"direct", "broker"}
		if i%2 == 1 {
			order = []string{"broker", "direct"}
		}
		for _, path := range order {
			if err := run(path); err != nil {
				return fmt.Errorf("%s path: %v", path, err)
			}
		}
	}
	return nil
}

func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}
