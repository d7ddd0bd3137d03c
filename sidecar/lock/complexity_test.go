package lock

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// maxComplexity is the most cyclomatic complexity a function of the engine may have
// (client-go's tryAcquireOrRenew has 13).
const maxComplexity = 15

// complexity counts a function's cyclomatic complexity as gocyclo counts it: 1, plus
// one for each if, for, range, case clause and select comm clause other than default,
// and each && and ||. Hand-written with go/ast because gocyclo is a tool, not a
// library this module can import, and the rule is these few lines.
func complexity(fn *ast.FuncDecl) int {
	n := 1
	ast.Inspect(fn, func(node ast.Node) bool {
		switch x := node.(type) {
		case *ast.IfStmt, *ast.ForStmt, *ast.RangeStmt:
			n++
		case *ast.CaseClause:
			if x.List != nil {
				n++
			}
		case *ast.CommClause:
			if x.Comm != nil {
				n++
			}
		case *ast.BinaryExpr:
			if x.Op == token.LAND || x.Op == token.LOR {
				n++
			}
		}
		return true
	})
	return n
}

// packageComplexity is the complexity of every function of the package's non-test
// files, keyed by "file:Func" (methods as "file:Recv.Func").
func packageComplexity(t *testing.T) map[string]int {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	out := map[string]int{}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(fset, name, src, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok {
				continue
			}
			key := name + ":" + fn.Name.Name
			if fn.Recv != nil && len(fn.Recv.List) > 0 {
				key = name + ":" + recvName(fn.Recv.List[0].Type) + "." + fn.Name.Name
			}
			out[key] = complexity(fn)
		}
	}
	return out
}

func recvName(e ast.Expr) string {
	switch x := e.(type) {
	case *ast.StarExpr:
		return recvName(x.X)
	case *ast.Ident:
		return x.Name
	case *ast.IndexExpr:
		return recvName(x.X)
	}
	return "?"
}

// TestComplexity keeps every function of the engine at a cyclomatic complexity of at
// most maxComplexity, so that each stays readable as one decision.
func TestComplexity(t *testing.T) {
	t.Parallel()
	var over []string
	c := packageComplexity(t)
	for fn, n := range c {
		if n > maxComplexity {
			over = append(over, fn)
		}
	}
	sort.Strings(over)
	for _, fn := range over {
		t.Errorf("%s has cyclomatic complexity %d, over %d: split its decisions into functions", fn, c[fn], maxComplexity)
	}
}

// TestComplexityCounter pins the counter on a function whose count is known.
func TestComplexityCounter(t *testing.T) {
	t.Parallel()
	src := `package p
func f(a, b bool, c chan int, xs []int) {
	if a && b || a { }                  // if, &&, ||: 3
	for i := 0; i < 1; i++ { }          // 1
	for range xs { }                    // 1
	switch { case a: case b, a: default: } // 2
	select { case <-c: default: }       // 1
}`
	f, err := parser.ParseFile(token.NewFileSet(), "p.go", src, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := complexity(f.Decls[0].(*ast.FuncDecl)); got != 9 {
		t.Errorf("complexity = %d, want 9", got)
	}
}
