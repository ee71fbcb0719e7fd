//go:build race

package message

// raceEnabled is set when the tests run under the race detector.
const raceEnabled = true
