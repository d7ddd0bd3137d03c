package webhook

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// review sends raw Pod JSON through controller-runtime's admission HTTP handler, as the
// API server does, and returns the AdmissionReview response.
func review(t testing.TB, h *PodInjector, op admissionv1.Operation, ns string, raw []byte) *admissionv1.AdmissionResponse {
	t.Helper()
	in := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:       types.UID("0d1c5e9a-0000-4000-8000-000000000001"),
			Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: ns,
			Operation: op,
			Object:    runtime.RawExtension{Raw: raw},
		},
	}
	body, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	(&admission.Webhook{Handler: h}).ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("HTTP %d: %s", rec.Code, rec.Body)
	}
	out := admissionv1.AdmissionReview{}
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("decode review: %v\n%s", err, rec.Body)
	}
	if out.Response == nil || out.Response.UID != in.Request.UID {
		t.Fatalf("response missing or UID not echoed: %s", rec.Body)
	}
	return out.Response
}

func podJSON(t testing.TB, pod *corev1.Pod) []byte {
	t.Helper()
	b, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func applyPatch(t testing.TB, raw []byte, resp *admissionv1.AdmissionResponse) *corev1.Pod {
	t.Helper()
	out := raw
	if len(resp.Patch) > 0 {
		if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
			t.Fatalf("patch type %v", resp.PatchType)
		}
		p, err := jsonpatch.DecodePatch(resp.Patch)
		if err != nil {
			t.Fatalf("decode patch: %v", err)
		}
		if out, err = p.Apply(raw); err != nil {
			t.Fatalf("apply patch: %v", err)
		}
	}
	// Decode as the API server does: case-sensitive (encoding/json would read
	// "speC" as "spec").
	pod := &corev1.Pod{}
	if err := utiljson.Unmarshal(out, pod); err != nil {
		t.Fatal(err)
	}
	return pod
}

// TestHandlerPatchesGolden: each golden input in, its JSON patch applied to the raw
// request gives exactly the golden output; the output sent again gives no patch.
func TestHandlerPatchesGolden(t *testing.T) {
	for name, opts := range goldenCases() {
		t.Run(name, func(t *testing.T) {
			h := NewPodInjector(opts)
			in := readPod(t, filepath.Join("testdata/golden", name+".in.yaml"))
			raw := podJSON(t, in)
			resp := review(t, h, admissionv1.Create, in.Namespace, raw)
			if !resp.Allowed || len(resp.Patch) == 0 {
				t.Fatalf("want allowed with a patch, got %+v", resp)
			}
			got := applyPatch(t, raw, resp)
			want := readPod(t, filepath.Join("testdata/golden", name+".out.yaml"))
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("patched pod (-golden +got):\n%s", diff)
			}
			again := review(t, h, admissionv1.Create, in.Namespace, podJSON(t, got))
			if !again.Allowed || len(again.Patch) != 0 {
				t.Errorf("reinvocation: want allowed without patch, got allowed=%v patch=%s", again.Allowed, again.Patch)
			}
		})
	}
}

// TestHandlerPatchOperations pins the JSON patch for the bare Pod: additions only,
// nothing of the user's removed or replaced.
func TestHandlerPatchOperations(t *testing.T) {
	in := readPod(t, "testdata/golden/bare.in.yaml")
	resp := review(t, NewPodInjector(DefaultOptions()), admissionv1.Create, "team-a", podJSON(t, in))
	var ops []struct {
		Op   string `json:"op"`
		Path string `json:"path"`
	}
	if err := json.Unmarshal(resp.Patch, &ops); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, o := range ops {
		got[o.Path] = o.Op
	}
	want := map[string]string{
		"/metadata/annotations/leasehold.io~1status":  "add",
		"/spec/initContainers":                        "add",
		"/spec/volumes":                               "add",
		"/spec/containers/0/env":                      "add",
		"/spec/containers/0/volumeMounts":             "add",
		"/spec/securityContext":                       "add",
		"/metadata/annotations/prometheus.io~1scrape": "add",
		"/metadata/annotations/prometheus.io~1port":   "add",
		"/metadata/annotations/prometheus.io~1path":   "add",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("patch operations (-want +got):\n%s\n%s", diff, resp.Patch)
	}
}

func TestHandlerResponses(t *testing.T) {
	h := NewPodInjector(DefaultOptions())
	bare := podJSON(t, readPod(t, "testdata/golden/bare.in.yaml"))
	withAnn := func(a map[string]string) []byte {
		p := readPod(t, "testdata/golden/bare.in.yaml")
		p.Annotations = a
		return podJSON(t, p)
	}
	tests := map[string]struct {
		op      admissionv1.Operation
		ns      string
		raw     []byte
		allowed bool
		code    int32
		msg     string
	}{
		"update is not ours":  {op: admissionv1.Update, ns: "team-a", raw: bare, allowed: true, code: 200, msg: "only on CREATE"},
		"undecodable":         {op: admissionv1.Create, ns: "team-a", raw: []byte(`{"spec":"not a pod spec"}`), allowed: false, code: 400},
		"no annotations":      {op: admissionv1.Create, ns: "team-a", raw: withAnn(nil), allowed: true, code: 200, msg: "no leasehold.io annotations"},
		"opted out":           {op: admissionv1.Create, ns: "team-a", raw: withAnn(map[string]string{AnnotationLocks: "BAD", AnnotationInject: "false"}), allowed: true, code: 200},
		"kube-system":         {op: admissionv1.Create, ns: "kube-system", raw: bare, allowed: true, code: 200, msg: "never injects in namespace kube-system"},
		"own namespace":       {op: admissionv1.Create, ns: "leasehold-system", raw: bare, allowed: true, code: 200},
		"status only":         {op: admissionv1.Create, ns: "team-a", raw: withAnn(map[string]string{AnnotationStatus: StatusInjected}), allowed: true, code: 200},
		"bad lock name":       {op: admissionv1.Create, ns: "team-a", raw: withAnn(map[string]string{AnnotationLocks: "a b"}), allowed: false, code: 403, msg: `leasehold: pod team-a/app: metadata.annotations[leasehold.io/locks]: Invalid value: "a b"`},
		"conflicting volume":  {op: admissionv1.Create, ns: "team-a", raw: []byte(`{"metadata":{"name":"x","annotations":{"leasehold.io/locks":"a"}},"spec":{"volumes":[{"name":"leasehold-socket","hostPath":{"path":"/run"}}],"containers":[{"name":"c","image":"i"}]}}`), allowed: false, code: 403, msg: `spec.volumes[0].name`},
		"generateName in msg": {op: admissionv1.Create, ns: "team-a", raw: []byte(`{"metadata":{"generateName":"web-","annotations":{"leasehold.io/locks":"-"}},"spec":{"containers":[{"name":"c","image":"i"}]}}`), allowed: false, code: 403, msg: `pod team-a/web-*`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			resp := review(t, h, tc.op, tc.ns, tc.raw)
			if resp.Allowed != tc.allowed || resp.Result == nil || resp.Result.Code != tc.code {
				t.Fatalf("allowed=%v result=%+v, want allowed=%v code %d", resp.Allowed, resp.Result, tc.allowed, tc.code)
			}
			if len(resp.Patch) != 0 {
				t.Errorf("unexpected patch %s", resp.Patch)
			}
			if !strings.Contains(resp.Result.Message, tc.msg) {
				t.Errorf("message %q lacks %q", resp.Result.Message, tc.msg)
			}
		})
	}
}

// TestHandlerKeepsUnknownFields: fields this build's Pod type does not know (a newer
// API server) survive the patch; only the injection is added.
func TestHandlerKeepsUnknownFields(t *testing.T) {
	raw := []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"team-a",` +
		`"annotations":{"leasehold.io/locks":"a"}},"spec":{"futureField":{"x":1},` +
		`"containers":[{"name":"c","image":"i","futureContainerField":true}]}}`)
	resp := review(t, NewPodInjector(DefaultOptions()), admissionv1.Create, "team-a", raw)
	if !resp.Allowed || len(resp.Patch) == 0 {
		t.Fatalf("want a patch, got %+v", resp)
	}
	if strings.Contains(string(resp.Patch), `"remove"`) {
		t.Errorf("patch removes something: %s", resp.Patch)
	}
	p, err := jsonpatch.DecodePatch(resp.Patch)
	if err != nil {
		t.Fatal(err)
	}
	out, err := p.Apply(raw)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{`"futureField":{"x":1}`, `"futureContainerField":true`, `"leasehold-agent"`} {
		if !strings.Contains(string(out), w) {
			t.Errorf("patched pod lacks %s: %s", w, out)
		}
	}
}

// A Pod that sets its own scrape annotations keeps them, and the admission answer
// warns (kubectl prints it) that the agent's metrics are not announced by them.
func TestHandlerWarnsOfOwnScrapeAnnotations(t *testing.T) {
	in := readPod(t, "testdata/golden/scrape-annotations.in.yaml")
	resp := review(t, NewPodInjector(DefaultOptions()), admissionv1.Create, "team-a", podJSON(t, in))
	if !resp.Allowed || len(resp.Patch) == 0 {
		t.Fatalf("want an allowed patch, got %+v", resp)
	}
	if len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], `port "metrics" = 9090`) {
		t.Errorf("warnings %q, want one naming the agent's metrics port", resp.Warnings)
	}
	bare := review(t, NewPodInjector(DefaultOptions()), admissionv1.Create, "team-a", podJSON(t, readPod(t, "testdata/golden/bare.in.yaml")))
	if len(bare.Warnings) != 0 {
		t.Errorf("a Pod without scrape annotations: warnings %q", bare.Warnings)
	}
}
