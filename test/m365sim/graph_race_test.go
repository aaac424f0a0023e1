//go:build race

package m365sim

// graphRace: the race detector makes the 150 MB test take minutes.
const graphRace = true
