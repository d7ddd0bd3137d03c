// Package charts holds the tests of the Helm chart in charts/leasehold: it renders the
// same objects as the kustomize base (and the cert-manager overlay), and helm lint
// passes. It renders with the Helm SDK (helm.sh/helm/v3), no cluster and no helm binary.
package charts

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/leasehold/leasehold/webhook"
)

const chartDir = "leasehold"

// kubeVersion is the Kubernetes the tests render for: the local cluster's (Makefile's
// K8S_VERSION); the chart requires 1.30 or later.
var kubeVersion = chartutil.KubeVersion{Version: "v1.37.2", Major: "1", Minor: "37"}

// object is one rendered manifest, normalized through JSON (numbers are float64).
type object = map[string]any

func key(o object) string {
	md, _ := o["metadata"].(map[string]any)
	ns, _ := md["namespace"].(string)
	return fmt.Sprintf("%v/%s/%v", o["kind"], ns, md["name"])
}

func normalize(t *testing.T, v any) object {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var o object
	if err := json.Unmarshal(b, &o); err != nil {
		t.Fatal(err)
	}
	return o
}

// kustomize builds manifests/<dir> with kustomize's library (what `kubectl kustomize` runs).
func kustomize(t *testing.T, dir string) map[string]object {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join("..", "manifests", dir))
	if err != nil {
		t.Fatalf("kustomize build manifests/%s: %v", dir, err)
	}
	out := map[string]object{}
	for _, r := range rm.Resources() {
		m, err := r.Map()
		if err != nil {
			t.Fatal(err)
		}
		o := normalize(t, m)
		out[key(o)] = o
	}
	return out
}

// renderChart renders the chart as `helm template` does, with values (YAML) over the
// chart's own, and returns its objects by kind/namespace/name.
func renderChart(t *testing.T, values string) (map[string]object, error) {
	t.Helper()
	return renderChartFor(t, values, kubeVersion)
}

func renderChartFor(t *testing.T, values string, kubeVersion chartutil.KubeVersion) (map[string]object, error) {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	vals, err := chartutil.ReadValues([]byte(values))
	if err != nil {
		t.Fatalf("values %q: %v", values, err)
	}
	caps := chartutil.DefaultCapabilities.Copy()
	caps.KubeVersion = kubeVersion
	if err := chartutil.IsCompatibleRange(ch.Metadata.KubeVersion, kubeVersion.Version); !err {
		t.Fatalf("the chart's kubeVersion %q refuses Kubernetes %s", ch.Metadata.KubeVersion, kubeVersion.Version)
	}
	rv, err := chartutil.ToRenderValues(ch, vals, chartutil.ReleaseOptions{Name: "leasehold", Namespace: "default", IsInstall: true}, caps)
	if err != nil {
		return nil, err
	}
	files, err := engine.Render(ch, rv)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	out := map[string]object{}
	for _, n := range names {
		if !strings.HasSuffix(n, ".yaml") {
			continue
		}
		d := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(files[n]), 4096)
		for {
			var m map[string]any
			if err := d.Decode(&m); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s does not parse: %v\n%s", n, err, files[n])
			}
			if m == nil {
				continue
			}
			o := normalize(t, m)
			if _, dup := out[key(o)]; dup {
				t.Errorf("%s renders %s twice", n, key(o))
			}
			out[key(o)] = o
		}
	}
	return out, nil
}

func mustRender(t *testing.T, values string) map[string]object {
	t.Helper()
	out, err := renderChart(t, values)
	if err != nil {
		t.Fatalf("render chart with %q: %v", values, err)
	}
	return out
}

// withoutHelmPolicy is o without the annotations that only instruct Helm
// (helm.sh/resource-policy: what helm uninstall keeps); kubectl has no such step.
func withoutHelmPolicy(o object) object {
	meta, _ := o["metadata"].(map[string]any)
	ann, _ := meta["annotations"].(map[string]any)
	if _, ok := ann["helm.sh/resource-policy"]; !ok {
		return o
	}
	out := maps.Clone(o)
	meta = maps.Clone(meta)
	ann = maps.Clone(ann)
	delete(ann, "helm.sh/resource-policy")
	if len(ann) == 0 {
		delete(meta, "annotations")
	} else {
		meta["annotations"] = ann
	}
	out["metadata"] = meta
	return out
}

// same reports every object that differs between the chart and kustomize.
func same(t *testing.T, what string, chart, kust map[string]object) {
	t.Helper()
	var keys []string
	for k := range kust {
		keys = append(keys, k)
	}
	for k := range chart {
		if _, ok := kust[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		c, inChart := chart[k]
		m, inKust := kust[k]
		switch {
		case !inChart:
			t.Errorf("%s: the chart lacks %s", what, k)
		case !inKust:
			t.Errorf("%s: the chart has %s, kustomize does not", what, k)
		default:
			if d := cmp.Diff(m, withoutHelmPolicy(c)); d != "" {
				t.Errorf("%s: %s differs (-kustomize +chart):\n%s", what, k, d)
			}
		}
	}
}

// The chart's defaults install what manifests/base installs, and certificates.mode
// cert-manager what manifests/overlays/cert-manager installs: object for object.
func TestChartMatchesKustomize(t *testing.T) {
	same(t, "defaults vs manifests/base", mustRender(t, ""), kustomize(t, "base"))
	same(t, "cert-manager vs manifests/overlays/cert-manager", mustRender(t, "certificates: {mode: cert-manager}"),
		kustomize(t, "overlays/cert-manager"))
	same(t, "webhook.clientCA vs manifests/overlays/apiserver-client-auth",
		mustRender(t, "webhook: {clientCA: {secretName: leasehold-apiserver-client-ca}}"), kustomize(t, "overlays/apiserver-client-auth"))
	// monitoring.enabled adds the objects of manifests/monitoring, no more, no less.
	withMonitoring := mustRender(t, "monitoring: {enabled: true}")
	for k := range kustomize(t, "base") {
		delete(withMonitoring, k)
	}
	same(t, "monitoring.enabled vs manifests/monitoring", withMonitoring, kustomize(t, "monitoring"))
}

func deploymentArgs(t *testing.T, objs map[string]object) []string {
	t.Helper()
	d := objs["Deployment/leasehold-system/leasehold-webhook"]
	if d == nil {
		t.Fatal("no Deployment leasehold-webhook")
	}
	var dep struct {
		Spec struct {
			Replicas float64
			Template struct {
				Spec struct {
					Containers []struct {
						Image string
						Args  []string
					}
				}
			}
		}
	}
	b, _ := json.Marshal(d)
	if err := json.Unmarshal(b, &dep); err != nil {
		t.Fatal(err)
	}
	c := dep.Spec.Template.Spec.Containers[0]
	return append([]string{"image=" + c.Image, fmt.Sprintf("replicas=%v", dep.Spec.Replicas)}, c.Args...)
}

// Values reach the objects they name.
func TestChartValues(t *testing.T) {
	objs := mustRender(t, `
namespace: locks
image: {repository: registry.example/leasehold, tag: v1.2.3}
replicas: 3
agent:
  pullPolicy: Always
  resources: {requests: {cpu: 20m, memory: 32Mi}, limits: {cpu: 200m, memory: 128Mi}}
  socketGroup: 4242
  plainContainer: true
  metricsBindAddress: "0"
webhook:
  namespaceSelector: {matchLabels: {team: a}}
  extraArgs: [--debug]
policies: {leaseHolder: {enabled: false}, leaseCreate: {enabled: false}, podAnnotations: {enabled: false}, webhookConfig: {enabled: false}, priorityClass: {enabled: false}}
`)
	d := objs["Deployment/locks/leasehold-webhook"]
	if d == nil {
		t.Fatalf("no Deployment in namespace locks: %v", slices.Sorted(func(yield func(string) bool) {
			for k := range objs {
				if !yield(k) {
					return
				}
			}
		}))
	}
	objs["Deployment/leasehold-system/leasehold-webhook"] = d
	got := strings.Join(deploymentArgs(t, objs), " ")
	for _, want := range []string{"image=registry.example/leasehold:v1.2.3", "replicas=3", "--agent-image=registry.example/leasehold:v1.2.3",
		"--agent-image-pull-policy=Always", "--agent-cpu-request=20m", "--agent-memory-request=32Mi", "--agent-cpu-limit=200m",
		"--agent-memory-limit=128Mi", "--socket-group=4242", "--plain-container", "--agent-metrics-bind-address=0", "--debug"} {
		if !strings.Contains(got+" ", want+" ") {
			t.Errorf("Deployment lacks %q: %s", want, got)
		}
	}
	// The agent flags the chart writes are the webhook's own, and parse to the values.
	fs := flag.NewFlagSet("leasehold-webhook", flag.ContinueOnError)
	opts := webhook.DefaultOptions()
	opts.BindFlags(fs)
	var agentArgs []string
	for _, a := range deploymentArgs(t, objs)[2:] {
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if fs.Lookup(name) != nil && name != "namespace" {
			agentArgs = append(agentArgs, a)
		}
	}
	if err := fs.Parse(agentArgs); err != nil {
		t.Fatalf("the webhook refuses the chart's agent flags %v: %v", agentArgs, err)
	}
	if err := opts.Validate(); err != nil {
		t.Fatal(err)
	}
	if opts.AgentImage != "registry.example/leasehold:v1.2.3" || opts.AgentImagePullPolicy != "Always" || opts.CPURequest.String() != "20m" ||
		opts.MemoryRequest.String() != "32Mi" || opts.CPULimit.String() != "200m" || opts.MemoryLimit.String() != "128Mi" ||
		opts.SocketGroup != 4242 || !opts.PlainContainer || opts.AgentMetricsBindAddress != "0" {
		t.Errorf("the webhook parses the chart's agent flags %v to %+v", agentArgs, opts)
	}

	mwc, _ := sigsyaml.Marshal(objs["MutatingWebhookConfiguration//leasehold-webhook"])
	for _, want := range []string{"team: a", "- locks", "namespace: locks"} {
		if !bytes.Contains(mwc, []byte(want)) {
			t.Errorf("webhook configuration lacks %q:\n%s", want, mwc)
		}
	}
	for k := range objs {
		if strings.HasPrefix(k, "ValidatingAdmissionPolicy") {
			t.Errorf("policies are off, yet the chart renders %s", k)
		}
	}
	if objs["ClusterRole//leasehold-operator"] == nil {
		t.Error("the operator ClusterRole (force-release) must stay without the policies")
	}
}

// Bad values are refused by values.schema.json, naming the value and what it should be.
func TestChartRefusesBadValues(t *testing.T) {
	for values, want := range map[string]string{
		"certificates: {mode: vault}":                   "at '/certificates/mode': value must be one of 'self-managed', 'cert-manager'",
		"replica: 3":                                    "additional properties 'replica' not allowed",
		"replicas: 0":                                   "at '/replicas': minimum: got 0, want 1",
		"agent: {pullPolicy: Sometimes}":                "at '/agent/pullPolicy': value must be one of",
		"policies: {leaseHolder: {enabled: no-thanks}}": "at '/policies/leaseHolder/enabled'",
	} {
		_, err := renderChart(t, values)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("values %q: want an error saying %q, got %v", values, want, err)
		}
	}
}

// On a cluster older than the policies (1.30) or native sidecars (1.29) the chart
// refuses to render unless they are turned off, saying which values to set.
func TestChartRefusesWhatTheClusterCannotRun(t *testing.T) {
	v129 := chartutil.KubeVersion{Version: "v1.29.9", Major: "1", Minor: "29"}
	v128 := chartutil.KubeVersion{Version: "v1.28.15", Major: "1", Minor: "28"}
	off := "policies: {leaseHolder: {enabled: false}, leaseCreate: {enabled: false}, podAnnotations: {enabled: false}, webhookConfig: {enabled: false}, priorityClass: {enabled: false}}\n"
	for _, tc := range []struct {
		v      chartutil.KubeVersion
		values string
		want   string // "" = renders
	}{
		{v129, "", "Kubernetes v1.29.9 has no ValidatingAdmissionPolicy v1 (1.30 or later): set policies.leaseHolder.enabled"},
		{v129, off, ""},
		{v128, off, "Kubernetes v1.28.15 has no native sidecars (1.29 or later): set agent.plainContainer=true"},
		{v128, off + "agent: {plainContainer: true}", ""},
	} {
		_, err := renderChartFor(t, tc.values, tc.v)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("Kubernetes %s, values %q: %v", tc.v.Version, tc.values, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("Kubernetes %s, values %q: want an error saying %q, got %v", tc.v.Version, tc.values, tc.want, err)
		}
	}
}

// helm lint (the SDK's linter, as `helm lint --strict` runs it) finds nothing.
func TestHelmLint(t *testing.T) {
	for _, values := range []string{"", "certificates: {mode: cert-manager}"} {
		vals, err := chartutil.ReadValues([]byte(values))
		if err != nil {
			t.Fatal(err)
		}
		l := lint.AllWithKubeVersion(chartDir, vals, "default", &kubeVersion)
		for _, m := range l.Messages {
			// INFO messages are advice (an icon); warnings and errors fail, as with --strict.
			if m.Severity > support.InfoSev {
				t.Errorf("helm lint (values %q): %s", values, m)
			} else {
				t.Logf("helm lint (values %q): %s", values, m)
			}
		}
	}
}

// TestWebhookIngressFrom: webhook.networkPolicy.from limits the webhook port (and only
// it) to the peers listed, as manifests/examples/webhook-ingress-from-apiserver.yaml
// does to the base: object for object.
func TestWebhookIngressFrom(t *testing.T) {
	dir := t.TempDir()
	base, err := filepath.Abs(filepath.Join("..", "manifests", "base"))
	if err != nil {
		t.Fatal(err)
	}
	patch, err := os.ReadFile(filepath.Join("..", "manifests", "examples", "webhook-ingress-from-apiserver.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(dir, base) // kustomize takes no absolute base
	if err != nil {
		t.Fatal(err)
	}
	kustomization := "resources: [" + rel + "]\npatches:\n- path: patch.yaml\n  target: {kind: NetworkPolicy, name: leasehold-webhook}\n"
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(kustomization), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "patch.yaml"), patch, 0o600); err != nil {
		t.Fatal(err)
	}
	rm, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build the base with the example patch: %v", err)
	}
	patched := map[string]object{}
	for _, r := range rm.Resources() {
		m, err := r.Map()
		if err != nil {
			t.Fatal(err)
		}
		o := normalize(t, m)
		patched[key(o)] = o
	}
	chart := mustRender(t, "webhook: {networkPolicy: {from: [{ipBlock: {cidr: 10.244.0.1/32}}]}}")
	same(t, "webhook.networkPolicy.from vs the base with manifests/examples/webhook-ingress-from-apiserver.yaml", chart, patched)

	np := chart["NetworkPolicy/leasehold-system/leasehold-webhook"]
	spec, _ := np["spec"].(map[string]any)
	ingress, _ := spec["ingress"].([]any)
	want := []any{
		map[string]any{"ports": []any{map[string]any{"port": float64(9443), "protocol": "TCP"}},
			"from": []any{map[string]any{"ipBlock": map[string]any{"cidr": "10.244.0.1/32"}}}},
		map[string]any{"ports": []any{map[string]any{"port": float64(8443), "protocol": "TCP"}}},
	}
	if d := cmp.Diff(want, ingress); d != "" {
		t.Errorf("ingress of the webhook Pods (-want +got):\n%s", d)
	}
}
