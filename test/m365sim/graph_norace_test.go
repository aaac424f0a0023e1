//go:build !race

package m365sim

const graphRace = false
