package webhook

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/leasehold/leasehold/internal/testing/testenv"
)

// peer is who connects to an agent's port, for the NetworkPolicy examples.
type peer struct {
	namespace, pod map[string]string
}

var (
	scraper = peer{namespace: map[string]string{"kubernetes.io/metadata.name": "monitoring"}, pod: map[string]string{"app.kubernetes.io/name": "prometheus"}}
	// Another Pod of the same monitoring namespace, and any Pod of another tenant.
	notPrometheus = peer{namespace: map[string]string{"kubernetes.io/metadata.name": "monitoring"}, pod: map[string]string{"app": "x"}}
	anyPod        = peer{namespace: map[string]string{"kubernetes.io/metadata.name": "tenant-b"}, pod: map[string]string{"app": "x"}}
)

// allows says whether np lets from reach port/proto of a Pod it selects (the agent's
// containerPort is named metrics), by the NetworkPolicy rules of networking/v1 for a
// peer in another namespace.
func allows(t *testing.T, np *networkingv1.NetworkPolicy, from peer, proto corev1.Protocol, port int32) bool {
	t.Helper()
	for _, rule := range np.Spec.Ingress {
		peerOK := len(rule.From) == 0
		for _, f := range rule.From {
			if f.IPBlock != nil || f.NamespaceSelector == nil { // same-namespace peers are not in these cases
				continue
			}
			ns, err := metav1.LabelSelectorAsSelector(f.NamespaceSelector)
			if err != nil {
				t.Fatal(err)
			}
			pod := labels.Everything()
			if f.PodSelector != nil {
				if pod, err = metav1.LabelSelectorAsSelector(f.PodSelector); err != nil {
					t.Fatal(err)
				}
			}
			peerOK = peerOK || (ns.Matches(labels.Set(from.namespace)) && pod.Matches(labels.Set(from.pod)))
		}
		portOK := len(rule.Ports) == 0
		for _, p := range rule.Ports {
			pr := corev1.ProtocolTCP
			if p.Protocol != nil {
				pr = *p.Protocol
			}
			if pr != proto {
				continue
			}
			switch {
			case p.Port == nil:
				portOK = true
			case p.Port.StrVal == MetricsPortName:
				portOK = portOK || port == 9090
			case p.EndPort != nil:
				portOK = portOK || (port >= p.Port.IntVal && port <= *p.EndPort)
			default:
				portOK = portOK || port == p.Port.IntVal
			}
		}
		if peerOK && portOK {
			return true
		}
	}
	return false
}

// TestAgentMetricsNetworkPolicyExamples: the shipped NetworkPolicy patterns for the
// agents' metrics port are valid for a real API server, let Prometheus scrape the
// agents (port 9090, the containerPort metrics) and keep every other Pod from it; the
// one for namespaces without a default-deny policy leaves every other port open.
func TestAgentMetricsNetworkPolicyExamples(t *testing.T) {
	load := func(name string) *networkingv1.NetworkPolicy {
		b, err := os.ReadFile(filepath.Join("..", "manifests", "examples", name))
		if err != nil {
			t.Fatal(err)
		}
		np := &networkingv1.NetworkPolicy{}
		if err := yaml.UnmarshalStrict(b, np); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return np
	}
	deny, open := load("agent-metrics-networkpolicy.yaml"), load("agent-metrics-networkpolicy-open-namespace.yaml")
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	tests := map[string]struct {
		np    *networkingv1.NetworkPolicy
		from  peer
		proto corev1.Protocol
		port  int32
		want  bool
	}{
		"default-deny: Prometheus scrapes":            {deny, scraper, tcp, 9090, true},
		"default-deny: another monitoring Pod cannot": {deny, notPrometheus, tcp, 9090, false},
		"default-deny: another tenant cannot":         {deny, anyPod, tcp, 9090, false},
		"open: Prometheus scrapes":                    {open, scraper, tcp, 9090, true},
		"open: another tenant cannot reach 9090":      {open, anyPod, tcp, 9090, false},
		"open: another monitoring Pod cannot":         {open, notPrometheus, tcp, 9090, false},
		"open: the app's 8080 stays open":             {open, anyPod, tcp, 8080, true},
		"open: 1 stays open":                          {open, anyPod, tcp, 1, true},
		"open: 9089 stays open":                       {open, anyPod, tcp, 9089, true},
		"open: 9091 stays open":                       {open, anyPod, tcp, 9091, true},
		"open: 65535 stays open":                      {open, anyPod, tcp, 65535, true},
		"open: UDP 9090 stays open":                   {open, anyPod, udp, 9090, true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := allows(t, tc.np, tc.from, tc.proto, tc.port); got != tc.want {
				t.Errorf("%s %d reachable: %v, want %v", tc.proto, tc.port, got, tc.want)
			}
		})
	}

	// The API server's own validation (endPort, named ports, peers).
	env, err := testenv.New()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("start envtest: %v", err)
	}
	defer func() { _ = env.Stop() }()
	cs := kubernetes.NewForConfigOrDie(cfg)
	for i, np := range []*networkingv1.NetworkPolicy{deny, open} {
		np.Name += []string{"-deny", "-open"}[i]
		if _, err := cs.NetworkingV1().NetworkPolicies("default").Create(context.Background(), np, metav1.CreateOptions{}); err != nil {
			t.Errorf("the API server refuses %s: %v", np.Name, err)
		}
	}
}
