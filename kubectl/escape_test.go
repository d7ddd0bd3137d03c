package kubectl

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/leasehold/leasehold/sidecar/lock"
)

func TestPrintable(t *testing.T) {
	tests := map[string]struct{ in, want string }{
		"agent identity":      {"api-7d9f_0f8e2a4c-1111-4a4a-9c9c-123456789abc", "api-7d9f_0f8e2a4c-1111-4a4a-9c9c-123456789abc"},
		"mode":                {"mutex", "mutex"},
		"empty":               {"", ""},
		"non-ASCII letters":   {"zürich-ünïcode", "zürich-ünïcode"},
		"ESC sequence":        {"mutex\x1b[2J\x1b]0;owned\a", `"mutex\x1b[2J\x1b]0;owned\a"`},
		"C1 control (CSI)":    {"a\u009b31mb", `"a\u009b31mb"`},
		"newline fakes a row": {"x\nfake  leader  ops  1", `"x\nfake  leader  ops  1"`},
		"tab fakes a column":  {"x\ty", `"x\ty"`},
		"space":               {"x y", `"x y"`},
		"looks quoted":        {`"mutex"`, `"\"mutex\""`},
		"right-to-left":       {"abc\u202edcb", `"abc\u202edcb"`},
		"invalid UTF-8":       {"a\xffb", `"a\xffb"`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := Printable(tc.in); got != tc.want {
				t.Errorf("Printable(%q) = %s, want %s", tc.in, got, tc.want)
			}
		})
	}
}

// Whoever may write a Lease chooses its annotations and holder identity. Listed,
// watched or force-released with kubectl leasehold, none of it reaches the operator's
// terminal as a control character: an ESC sequence (which could retitle the window,
// clear the screen or, on some terminals, feed input back) is printed escaped, and a
// newline cannot fake another row.
func TestLeaseStringsReachTheTerminalEscaped(t *testing.T) {
	ctx := context.Background()
	ns := createNamespace(t)
	const esc = "\x1b]0;owned\a\x1b[2J"
	l := lease(ns, "db", "x"+esc+"\nfake  leader  ops  1", "mutex"+esc, 3, time.Now(), true)
	l.Annotations[lock.AnnotationQueue] = "w" + esc + ",other"
	if _, err := client.CoordinationV1().Leases(ns).Create(ctx, l, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	clean := func(t *testing.T, what, out string) {
		t.Helper()
		if strings.ContainsAny(out, "\x1b\a\r") {
			t.Errorf("%s printed a control character:\n%q", what, out)
		}
		if !strings.Contains(out, `\x1b]0;owned\a\x1b[2J`) {
			t.Errorf("%s does not show the escape sequence escaped:\n%q", what, out)
		}
	}
	out, _, err := run(t, "", "-n", ns)
	if err != nil {
		t.Fatal(err)
	}
	clean(t, "kubectl leasehold", out)
	if lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n"); len(lines) != 2 {
		t.Errorf("want the header and one row, got %d lines:\n%s", len(lines), out)
	}
	for _, w := range []string{`"mutex\x1b`, `"x\x1b`, `\nfake  leader  ops  1"`, `2 (next "w\x1b`} {
		if !strings.Contains(out, w) {
			t.Errorf("listing lacks %s:\n%s", w, out)
		}
	}
	out, _, err = run(t, "", "-n", ns, "release", "db", "--yes")
	if err != nil {
		t.Fatal(err)
	}
	clean(t, "kubectl leasehold release", out)
}
