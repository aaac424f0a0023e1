//go:build race

package test

// raceDetector: this test binary (and the simulators in it) run with the
// race detector, which makes the 100 MB Graph test take minutes.
const raceDetector = true
