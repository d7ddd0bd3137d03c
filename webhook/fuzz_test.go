package webhook

import (
	"encoding/json"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// FuzzParseAnnotations: any annotations either parse into a Config that keeps every
// rule (valid, unique names; client-go's timing rules; port range), or are refused
// with messages that name an annotation. Seeds: testdata/fuzz/FuzzParseAnnotations.
func FuzzParseAnnotations(f *testing.F) {
	f.Add("db", "", "", "", "", "", "", "")
	f.Add("a,b", "c", "30s", "20s", "4s", "8970", "", "")
	f.Fuzz(func(t *testing.T, locks, leader, lease, renew, retry, port, extraKey, extraValue string) {
		a := map[string]string{}
		for k, v := range map[string]string{AnnotationLocks: locks, AnnotationLeader: leader,
			AnnotationLeaseDuration: lease, AnnotationRenewDeadline: renew, AnnotationRetryPeriod: retry,
			AnnotationTCPPort: port} {
			if v != "" {
				a[k] = v
			}
		}
		if extraKey != "" {
			a[extraKey] = extraValue
		}
		cfg, errs := ParseAnnotations(a)
		if len(errs) > 0 {
			if cfg != nil {
				t.Fatalf("config with errors")
			}
			for _, e := range errs {
				if !strings.HasPrefix(e.Field, "metadata.annotations[") || !strings.Contains(e.Detail, "fix") {
					t.Fatalf("error without annotation or fix: %v", e)
				}
			}
			return
		}
		seen := map[string]bool{}
		for _, n := range append(append([]string{}, cfg.Locks...), cfg.Leader...) {
			if len(validation.IsDNS1123Subdomain(n)) > 0 || seen[n] {
				t.Fatalf("accepted bad or duplicate name %q in %+v", n, cfg)
			}
			seen[n] = true
		}
		if Wanted(a) && len(seen) == 0 {
			t.Fatalf("accepted a lock annotation without names: %q", a)
		}
		if cfg.LeaseDuration <= cfg.RenewDeadline || float64(cfg.RenewDeadline) <= 1.2*float64(cfg.RetryPeriod) ||
			cfg.RetryPeriod <= 0 {
			t.Fatalf("accepted timings %+v", cfg)
		}
		if cfg.TCPPort != 0 && (cfg.TCPPort < 1024 || cfg.TCPPort > 65535) {
			t.Fatalf("accepted port %d", cfg.TCPPort)
		}
	})
}

// FuzzHandler: any CREATE request body gives an answer, never a panic; an admitted
// Pod's patch applies to the raw request, and the patched Pod sent again is admitted
// unchanged (idempotence), with one agent. Seeds: testdata/fuzz/FuzzHandler.
func FuzzHandler(f *testing.F) {
	f.Add([]byte(`{"metadata":{"name":"p","annotations":{"leasehold.io/locks":"a"}},"spec":{"containers":[{"name":"c","image":"i"}]}}`), false)
	f.Fuzz(func(t *testing.T, raw []byte, plain bool) {
		if !json.Valid(raw) {
			return // the API server only sends JSON
		}
		opts := DefaultOptions()
		opts.PlainContainer = plain
		h := NewPodInjector(opts)
		resp := review(t, h, admissionv1.Create, "team-a", raw)
		if !resp.Allowed || len(resp.Patch) == 0 {
			return
		}
		pod := applyPatch(t, raw, resp)
		agents := 0
		for _, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
			if c.Name == AgentContainerName {
				agents++
			}
		}
		if agents != 1 {
			t.Fatalf("%d agents after injection", agents)
		}
		again := review(t, h, admissionv1.Create, "team-a", podJSON(t, pod))
		if !again.Allowed || len(again.Patch) != 0 {
			t.Fatalf("second pass: allowed=%v patch=%s", again.Allowed, again.Patch)
		}
	})
}
