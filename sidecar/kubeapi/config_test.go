package kubeapi

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfigFromKubeconfig(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good", `apiVersion: v1
kind: Config
current-context: b
clusters:
- name: one
  cluster: {server: "https://one:6443"}
- name: two
  cluster: {server: "https://two:6443", certificate-authority: ca.crt}
users:
- name: u
  user: {token: secret, client-certificate: certs/u.crt, client-key: /abs/u.key}
contexts:
- name: a
  context: {cluster: one, user: u}
- name: b
  context: {cluster: two, user: u}
`)
	cfg, err := Config(good)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != "https://two:6443" || cfg.BearerToken != "secret" ||
		cfg.TLSClientConfig.CAFile != filepath.Join(dir, "ca.crt") ||
		cfg.TLSClientConfig.CertFile != filepath.Join(dir, "certs/u.crt") || cfg.TLSClientConfig.KeyFile != "/abs/u.key" {
		t.Fatalf("current context b not applied (paths relative to the file): %+v", cfg)
	}
	tests := map[string]struct{ body, mention string }{
		"no current context": {"current-context: x\ncontexts: []\n", "current-context"},
		"missing cluster":    {"current-context: a\ncontexts:\n- name: a\n  context: {cluster: gone}\n", `cluster "gone"`},
		"not yaml":           {"{{{", "parse kubeconfig"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := Config(write(strings.ReplaceAll(name, " ", "-"), tc.body))
			if err == nil || !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("want an error mentioning %q, got %v", tc.mention, err)
			}
		})
	}
}
