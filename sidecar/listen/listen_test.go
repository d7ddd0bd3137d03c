package listen

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

func TestUnixRemovesStaleSocketAndSetsMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "agent.sock")
	first, err := Unix(path, SocketMode)
	if err != nil {
		t.Fatal(err)
	}
	// A crashed agent leaves its socket behind; the next one must still start.
	if ul, ok := first.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(false)
	}
	first.Close()
	l, err := Unix(path, 0o777)
	if err != nil {
		t.Fatalf("listen over a stale socket: %v", err)
	}
	defer l.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o770 {
		t.Fatalf("asked for 0777: want world bits cleared (0770), got %v", fi.Mode().Perm())
	}
	if _, err := Unix(filepath.Join(t.TempDir(), "a.sock"), SocketMode); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	c.Close()
}

func TestLoopbackOnly(t *testing.T) {
	tests := map[string]bool{
		"127.0.0.1:0": true, "localhost:0": true, "[::1]:0": true,
		"0.0.0.0:0": false, ":0": false, "10.1.2.3:0": false, "example.com:80": false, "127.0.0.1:x": false,
	}
	for addr, ok := range tests {
		t.Run(addr, func(t *testing.T) {
			l, err := Loopback(addr)
			if err == nil {
				defer l.Close()
			}
			if ok && err != nil && addr != "[::1]:0" {
				t.Fatalf("want listening, got %v", err)
			}
			if !ok && err == nil {
				t.Fatalf("want refused, listening on %s", l.Addr())
			}
		})
	}
}
