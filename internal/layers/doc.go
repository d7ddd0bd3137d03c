// Package layers holds no code. Its test, TestLayers, is the map of the house: which
// package of the project may import which, what each binary may link, and that no
// product package imports test-support code. Moving or adding a package means one
// line in its tables.
package layers
