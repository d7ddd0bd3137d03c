package webhook

import (
	"flag"
	"fmt"
	"net"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kubectl/pkg/util/qos"
	psapi "k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

// goldenCases maps a golden file prefix to the options it is injected with.
func goldenCases() map[string]Options {
	cases := map[string]Options{}
	matches, _ := filepath.Glob("testdata/golden/*.in.yaml")
	for _, m := range matches {
		name := strings.TrimSuffix(filepath.Base(m), ".in.yaml")
		opts := DefaultOptions()
		if name == "plain-container" {
			opts.PlainContainer = true
		}
		cases[name] = opts
	}
	return cases
}

func readPod(t testing.TB, path string) *corev1.Pod {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{}
	if err := yaml.UnmarshalStrict(b, pod); err != nil {
		t.Fatalf("decode %s: %v", path, err)
	}
	return pod
}

func mustInject(t testing.TB, pod *corev1.Pod, opts Options) *corev1.Pod {
	t.Helper()
	cfg, errs := ParseAnnotations(pod.Annotations)
	if len(errs) > 0 {
		t.Fatalf("parse annotations: %v", errs.ToAggregate())
	}
	out := pod.DeepCopy()
	if errs := Inject(out, cfg, opts); len(errs) > 0 {
		t.Fatalf("inject: %v", errs.ToAggregate())
	}
	return out
}

// TestInjectGolden compares the whole injected Pod with a golden file for each input
// Pod, then injects the output again and expects no change.
func TestInjectGolden(t *testing.T) {
	cases := goldenCases()
	if len(cases) < 8 {
		t.Fatalf("found %d golden inputs in testdata/golden, want at least 8", len(cases))
	}
	for name, opts := range cases {
		t.Run(name, func(t *testing.T) {
			in := readPod(t, filepath.Join("testdata/golden", name+".in.yaml"))
			got := mustInject(t, in, opts)

			goldenPath := filepath.Join("testdata/golden", name+".out.yaml")
			if *update {
				b, err := yaml.Marshal(got)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(goldenPath, b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want := readPod(t, goldenPath)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("injected pod differs from %s (-want +got):\n%s", goldenPath, diff)
			}

			again := mustInject(t, got, opts)
			if diff := cmp.Diff(got, again); diff != "" {
				t.Errorf("re-injecting changed the pod (-first +second):\n%s", diff)
			}
		})
	}
}

// TestInjectGoldenShape pins the contract's points in the golden outputs, so that a
// golden file regenerated with -update cannot silently lose them.
func TestInjectGoldenShape(t *testing.T) {
	for name, opts := range goldenCases() {
		t.Run(name, func(t *testing.T) {
			in := readPod(t, filepath.Join("testdata/golden", name+".in.yaml"))
			out := readPod(t, filepath.Join("testdata/golden", name+".out.yaml"))
			var agent corev1.Container
			if opts.PlainContainer {
				agent = out.Spec.Containers[0]
				if len(out.Spec.InitContainers) != len(in.Spec.InitContainers) {
					t.Errorf("plain mode changed the number of init containers")
				}
				if agent.RestartPolicy != nil {
					t.Errorf("plain container has restartPolicy %v", *agent.RestartPolicy)
				}
				if diff := cmp.Diff(in.Spec.Containers, stripInjected(out.Spec.Containers[1:]), cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("app containers changed beyond mount and env (-in +out):\n%s", diff)
				}
				if diff := cmp.Diff(in.Spec.InitContainers, stripInjected(out.Spec.InitContainers), cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("init containers changed beyond mount and env (-in +out):\n%s", diff)
				}
			} else {
				agent = out.Spec.InitContainers[0]
				if agent.RestartPolicy == nil || *agent.RestartPolicy != corev1.ContainerRestartPolicyAlways {
					t.Errorf("native sidecar needs restartPolicy Always, got %v", agent.RestartPolicy)
				}
				if diff := cmp.Diff(in.Spec.Containers, stripInjected(out.Spec.Containers)); diff != "" {
					t.Errorf("app containers changed beyond mount and env (-in +out):\n%s", diff)
				}
				if diff := cmp.Diff(in.Spec.InitContainers, stripInjected(out.Spec.InitContainers[1:]), cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("init containers changed beyond mount and env (-in +out):\n%s", diff)
				}
			}
			if agent.Name != AgentContainerName || agent.StartupProbe == nil || agent.StartupProbe.Exec == nil {
				t.Fatalf("agent container %q without exec startup probe", agent.Name)
			}
			for _, c := range append(append([]corev1.Container{}, out.Spec.InitContainers...), out.Spec.Containers...) {
				if !hasMount(c) {
					t.Errorf("container %q lacks the socket mount", c.Name)
				}
				// Only the agent may write in the socket volume: any other container
				// that could would replace the client the others run, or the socket.
				for _, m := range c.VolumeMounts {
					if m.Name == SocketVolumeName && m.ReadOnly != (c.Name != AgentContainerName) {
						t.Errorf("container %q mounts the socket volume with readOnly %v, want %v", c.Name, m.ReadOnly, c.Name != AgentContainerName)
					}
				}
				if c.Name != AgentContainerName && envValue(c, EnvSocket) != SocketPath {
					t.Errorf("container %q: %s=%q", c.Name, EnvSocket, envValue(c, EnvSocket))
				}
				// The agent installs the client at bin/leasehold beside its socket.
				if want := path.Join(path.Dir(argValue(agent.Args, "--socket")), "bin", "leasehold"); c.Name != AgentContainerName && envValue(c, EnvCLI) != want {
					t.Errorf("container %q: %s=%q, want %q (beside the agent's --socket)", c.Name, EnvCLI, envValue(c, EnvCLI), want)
				}
				if c.Name != AgentContainerName && (envValue(c, EnvURL) != "") != (out.Annotations[AnnotationTCPPort] != "") {
					t.Errorf("container %q: %s=%q with tcp-port %q", c.Name, EnvURL, envValue(c, EnvURL), out.Annotations[AnnotationTCPPort])
				}
			}
			// The agent runs as a user of its own, not as distroless's nonroot
			// (65532), the UID app containers run as most often.
			if u := ptr.Deref(agent.SecurityContext.RunAsUser, 0); u != AgentUID || u == 65532 {
				t.Errorf("agent runAsUser %d, want %d (not 65532)", u, AgentUID)
			}
			if f := envField(agent, EnvMemoryLimit); f == nil || f.ResourceFieldRef == nil || f.ResourceFieldRef.Resource != "limits.memory" ||
				f.ResourceFieldRef.ContainerName != AgentContainerName || f.ResourceFieldRef.Divisor.String() != "1" {
				t.Errorf("agent %s: %+v, want the downward API's limits.memory of %s in bytes", EnvMemoryLimit, f, AgentContainerName)
			}
			n := 0
			for _, g := range out.Spec.SecurityContext.SupplementalGroups {
				if g == AgentUID {
					n++
				}
			}
			if n != 1 {
				t.Errorf("supplementalGroups %v: want %d exactly once", out.Spec.SecurityContext.SupplementalGroups, AgentUID)
			}
			if out.Annotations[AnnotationStatus] != StatusInjected {
				t.Errorf("status annotation %q", out.Annotations[AnnotationStatus])
			}
			// The agent's metrics port is no port the Pod declares, nor its tcp-port.
			if addr := argValue(agent.Args, "--metrics-bind-address"); addr != "0" {
				_, port, err := net.SplitHostPort(addr)
				if err != nil {
					t.Fatalf("agent --metrics-bind-address=%q: %v", addr, err)
				}
				if port == out.Annotations[AnnotationTCPPort] {
					t.Errorf("agent metrics on %s, the port of %s", addr, AnnotationTCPPort)
				}
				for _, c := range append(append([]corev1.Container{}, out.Spec.InitContainers...), out.Spec.Containers...) {
					for _, p := range c.Ports {
						if strconv.Itoa(int(p.ContainerPort)) == port && c.Name != AgentContainerName {
							t.Errorf("agent metrics on %s, a port container %q declares", addr, c.Name)
						}
					}
				}
				// Declared on the agent as "metrics", so that a PodMonitor finds it.
				if len(agent.Ports) != 1 || agent.Ports[0].Name != MetricsPortName || strconv.Itoa(int(agent.Ports[0].ContainerPort)) != port {
					t.Errorf("agent ports %+v, want one named %q on %s", agent.Ports, MetricsPortName, port)
				}
			}
			// The agent keeps a Guaranteed Pod Guaranteed (Kubernetes' own QoS rules).
			if inQoS := qos.ComputePodQOS(in); inQoS == corev1.PodQOSGuaranteed {
				if outQoS := qos.ComputePodQOS(out); outQoS != inQoS {
					t.Errorf("the injected Pod is %s, the Pod was %s", outQoS, inQoS)
				}
			}
			// The agent's token: one hour. 3607 s is the kubelet's own kube-api-access
			// value, which an API server with --service-account-extend-token-expiration
			// (the default) turns into a token valid for a year.
			for _, v := range out.Spec.Volumes {
				if v.Name != TokenVolumeName {
					continue
				}
				for _, s := range v.Projected.Sources {
					if s.ServiceAccountToken != nil && ptr.Deref(s.ServiceAccountToken.ExpirationSeconds, 0) != 3600 {
						t.Errorf("agent token expirationSeconds %v, want 3600", ptr.Deref(s.ServiceAccountToken.ExpirationSeconds, 0))
					}
				}
			}
		})
	}
}

// argValue is the value of --name=value in args.
func argValue(args []string, name string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
	}
	return ""
}

func hasMount(c corev1.Container) bool {
	for _, m := range c.VolumeMounts {
		if m.Name == SocketVolumeName && m.MountPath == SocketDir {
			return true
		}
	}
	return false
}

func envValue(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

func envField(c corev1.Container, name string) *corev1.EnvVarSource {
	for _, e := range c.Env {
		if e.Name == name {
			return e.ValueFrom
		}
	}
	return nil
}

// TestInjectMakesUsersSocketMountReadOnly: a container that mounts the socket volume
// itself (read-write) gets it read-only, as every container but the agent.
func TestInjectMakesUsersSocketMountReadOnly(t *testing.T) {
	pod := readPod(t, "testdata/golden/bare.in.yaml")
	pod.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: SocketVolumeName, MountPath: SocketDir}}
	got := mustInject(t, pod, DefaultOptions())
	want := []corev1.VolumeMount{{Name: SocketVolumeName, MountPath: SocketDir, ReadOnly: true}}
	if diff := cmp.Diff(want, got.Spec.Containers[0].VolumeMounts); diff != "" {
		t.Errorf("the user's read-write mount of the socket volume (-want +got):\n%s", diff)
	}
}

// stripInjected removes the socket mount and the LEASEHOLD_* env from containers.
func stripInjected(cs []corev1.Container) []corev1.Container {
	out := make([]corev1.Container, 0, len(cs))
	for _, c := range cs {
		c = *c.DeepCopy()
		var mounts []corev1.VolumeMount
		for _, m := range c.VolumeMounts {
			if m.Name != SocketVolumeName {
				mounts = append(mounts, m)
			}
		}
		c.VolumeMounts = mounts
		var env []corev1.EnvVar
		for _, e := range c.Env {
			if e.Name != EnvSocket && e.Name != EnvURL && e.Name != EnvCLI {
				env = append(env, e)
			}
		}
		c.Env = env
		out = append(out, c)
	}
	return out
}

// TestInjectReinvocation: another webhook adds a container after ours; the reinvoked
// injector gives that container the mount and env and changes nothing else.
func TestInjectReinvocation(t *testing.T) {
	opts := DefaultOptions()
	first := mustInject(t, readPod(t, "testdata/golden/bare.in.yaml"), opts)
	later := first.DeepCopy()
	later.Spec.Containers = append(later.Spec.Containers, corev1.Container{Name: "mesh-proxy", Image: "proxy:1"})

	got := mustInject(t, later, opts)

	want := later.DeepCopy()
	want.Spec.Containers[1].VolumeMounts = []corev1.VolumeMount{{Name: SocketVolumeName, MountPath: SocketDir, ReadOnly: true}}
	want.Spec.Containers[1].Env = []corev1.EnvVar{{Name: EnvSocket, Value: SocketPath}, {Name: EnvCLI, Value: CLIPath}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("reinvocation (-want +got):\n%s", diff)
	}
}

// TestInjectReplacesStaleAgent: a Pod re-submitted with different locks gets an agent
// with the new arguments, still exactly one.
func TestInjectReplacesStaleAgent(t *testing.T) {
	opts := DefaultOptions()
	first := mustInject(t, readPod(t, "testdata/golden/bare.in.yaml"), opts)
	first.Annotations[AnnotationLocks] = "other"
	got := mustInject(t, first, opts)
	if n := len(got.Spec.InitContainers); n != 1 {
		t.Fatalf("%d init containers, want 1", n)
	}
	if args := strings.Join(got.Spec.InitContainers[0].Args, " "); !strings.Contains(args, "--locks=other ") {
		t.Errorf("agent args not updated: %s", args)
	}
}

func TestInjectHostNetworkTurnsAgentMetricsOff(t *testing.T) {
	pod := readPod(t, "testdata/golden/bare.in.yaml")
	pod.Spec.HostNetwork = true
	got := mustInject(t, pod, DefaultOptions())
	if args := got.Spec.InitContainers[0].Args; !slices.Contains(args, "--metrics-bind-address=0") {
		t.Errorf("hostNetwork agent args %v, want --metrics-bind-address=0", args)
	}
}

// TestInjectMovesAgentMetricsPort: the agent's metrics leave a port the Pod uses for
// the next free one (the golden case metrics-port has the full Pod).
func TestInjectMovesAgentMetricsPort(t *testing.T) {
	tests := map[string]struct {
		mutate func(*corev1.Pod)
		want   string
	}{
		"default":        {mutate: func(*corev1.Pod) {}, want: ":9090"},
		"tcp-port on it": {mutate: func(p *corev1.Pod) { p.Annotations[AnnotationTCPPort] = "9090" }, want: ":9091"},
		"app port on it": {mutate: func(p *corev1.Pod) {
			p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 9090, Protocol: corev1.ProtocolTCP}}
		}, want: ":9091"},
		"UDP port does not clash": {mutate: func(p *corev1.Pod) {
			p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 9090, Protocol: corev1.ProtocolUDP}}
		}, want: ":9090"},
		"hostNetwork: metrics off":    {mutate: func(p *corev1.Pod) { p.Spec.HostNetwork = true }, want: "0"},
		"leasehold.io/metrics: false": {mutate: func(p *corev1.Pod) { p.Annotations[AnnotationMetrics] = "false" }, want: "0"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			pod := readPod(t, "testdata/golden/bare.in.yaml")
			tc.mutate(pod)
			got := mustInject(t, pod, DefaultOptions())
			if addr := argValue(got.Spec.InitContainers[0].Args, "--metrics-bind-address"); addr != tc.want {
				t.Errorf("agent --metrics-bind-address=%s, want %s", addr, tc.want)
			}
		})
	}
}

func TestInjectStatusAloneDoesNotSkip(t *testing.T) {
	pod := readPod(t, "testdata/golden/bare.in.yaml")
	pod.Annotations[AnnotationStatus] = StatusInjected
	got := mustInject(t, pod, DefaultOptions())
	if len(got.Spec.InitContainers) != 1 || got.Spec.InitContainers[0].Name != AgentContainerName {
		t.Errorf("a user-written status annotation must not bypass injection: %+v", got.Spec.InitContainers)
	}
}

func TestInjectConflicts(t *testing.T) {
	base := func() *corev1.Pod { return readPod(t, "testdata/golden/bare.in.yaml") }
	tests := map[string]struct {
		mutate func(*corev1.Pod)
		want   string // in the error
	}{
		"volume name taken by a hostPath": {
			mutate: func(p *corev1.Pod) {
				p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: SocketVolumeName,
					VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/run"}}})
			},
			want: `spec.volumes[0].name: Invalid value: "leasehold-socket": the volume name "leasehold-socket" is reserved`,
		},
		"token volume name taken": {
			mutate: func(p *corev1.Pod) {
				p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: TokenVolumeName,
					VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
			},
			want: `the volume name "leasehold-agent-token" is reserved`,
		},
		"another volume at /run/leasehold": {
			mutate: func(p *corev1.Pod) {
				p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "mine", MountPath: "/run/leasehold/"}}
			},
			want: `spec.containers[0].volumeMounts[0].mountPath: Invalid value: "/run/leasehold/": /run/leasehold is where`,
		},
		"socket volume mounted elsewhere": {
			mutate: func(p *corev1.Pod) {
				p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: SocketVolumeName, MountPath: "/sock"}}
			},
			want: `must be mounted at /run/leasehold`,
		},
		"LEASEHOLD_SOCKET set to something else": {
			mutate: func(p *corev1.Pod) {
				p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: EnvSocket, Value: "/tmp/x.sock"}}
			},
			want: `spec.containers[0].env[0]: Invalid value: "LEASEHOLD_SOCKET": LEASEHOLD_SOCKET is set by the Leasehold webhook to "/run/leasehold/agent.sock"; fix: remove it from container "app"`,
		},
		"tcp port used by a container": {
			mutate: func(p *corev1.Pod) {
				p.Annotations[AnnotationTCPPort] = "8080"
				p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 8080}}
			},
			want: `container "app" uses port 8080, which leasehold.io/tcp-port asks the agent to listen on`,
		},
		"tcp port with hostNetwork": {
			mutate: func(p *corev1.Pod) {
				p.Annotations[AnnotationTCPPort] = "8970"
				p.Spec.HostNetwork = true
			},
			want: `the Pod uses hostNetwork, so the port would be on the node's loopback`,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			pod := base()
			tc.mutate(pod)
			cfg, errs := ParseAnnotations(pod.Annotations)
			if len(errs) > 0 {
				t.Fatal(errs.ToAggregate())
			}
			before := pod.DeepCopy()
			errs = Inject(pod, cfg, DefaultOptions())
			if len(errs) == 0 {
				t.Fatalf("no conflict reported")
			}
			if msg := errs.ToAggregate().Error(); !strings.Contains(msg, tc.want) {
				t.Errorf("error %q\nwant it to contain %q", msg, tc.want)
			}
			if diff := cmp.Diff(before, pod); diff != "" {
				t.Errorf("a refused pod was modified:\n%s", diff)
			}
		})
	}
}

// restrictedApp makes a Pod's own containers meet the restricted profile, so that
// the only thing under test is what the injection adds.
func restrictedApp(pod *corev1.Pod) {
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range cs {
			cs[i].SecurityContext = &corev1.SecurityContext{
				RunAsNonRoot:             ptr.To(true),
				AllowPrivilegeEscalation: ptr.To(false),
				Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			}
		}
	}
}

// TestInjectedPodsAreRestricted evaluates every injected golden Pod (its own
// containers made compliant first) and a Pod holding only the agent with
// k8s.io/pod-security-admission's own checks at the restricted level.
func TestInjectedPodsAreRestricted(t *testing.T) {
	evaluator, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		t.Fatal(err)
	}
	lv := psapi.LevelVersion{Level: psapi.LevelRestricted, Version: psapi.LatestVersion()}
	check := func(t *testing.T, pod *corev1.Pod) {
		t.Helper()
		res := policy.AggregateCheckResults(evaluator.EvaluatePod(lv, &pod.ObjectMeta, &pod.Spec))
		if !res.Allowed {
			t.Errorf("restricted: %s: %s", res.ForbiddenReason(), res.ForbiddenDetail())
		}
	}
	for name, opts := range goldenCases() {
		t.Run(name, func(t *testing.T) {
			in := readPod(t, filepath.Join("testdata/golden", name+".in.yaml"))
			restrictedApp(in)
			check(t, in) // the premise: the app alone passes
			check(t, mustInject(t, in, opts))
		})
	}
	t.Run("agent alone", func(t *testing.T) {
		for _, plain := range []bool{false, true} {
			opts := DefaultOptions()
			opts.PlainContainer = plain
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{AnnotationLocks: "x"}}}
			check(t, mustInject(t, pod, opts))
		}
	})
	t.Run("the check can fail", func(t *testing.T) {
		opts := DefaultOptions()
		pod := mustInject(t, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{AnnotationLocks: "x"}}}, opts)
		pod.Spec.InitContainers[0].SecurityContext.AllowPrivilegeEscalation = nil
		res := policy.AggregateCheckResults(evaluator.EvaluatePod(lv, &pod.ObjectMeta, &pod.Spec))
		if res.Allowed {
			t.Errorf("an agent without allowPrivilegeEscalation=false passed restricted")
		}
	})
}

// TestInjectReplacesUserAgentContainer: a container that the user named like the agent
// is never kept, even when its image and arguments are the agent's: it could be
// privileged, or carry another Pod's identity. The result is the Pod as if the user
// had not written it, and injecting that again changes nothing.
func TestInjectReplacesUserAgentContainer(t *testing.T) {
	tests := map[string]struct {
		plain  bool
		mutate func(agent *corev1.Container)
	}{
		"privileged": {mutate: func(a *corev1.Container) {
			a.SecurityContext = &corev1.SecurityContext{Privileged: ptr.To(true), RunAsUser: ptr.To[int64](0)}
		}},
		"another Pod's identity in env": {mutate: func(a *corev1.Container) {
			a.Env = []corev1.EnvVar{{Name: "POD_NAME", Value: "someone-else"}, {Name: "POD_UID", Value: "0000"},
				{Name: "POD_NAMESPACE", Value: "team-b"}}
		}},
		"extra args after the agent's": {mutate: func(a *corev1.Container) {
			a.Command = []string{"/bin/sh", "-c", "exec /usr/local/bin/leasehold-agent \"$@\"", "--"}
		}},
		"host mount": {mutate: func(a *corev1.Container) {
			a.VolumeMounts = append(a.VolumeMounts, corev1.VolumeMount{Name: "host", MountPath: "/host"})
		}},
		"plain mode, privileged": {plain: true, mutate: func(a *corev1.Container) {
			a.SecurityContext = &corev1.SecurityContext{Privileged: ptr.To(true)}
		}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			opts := DefaultOptions()
			opts.PlainContainer = tc.plain
			clean := readPod(t, "testdata/golden/bare.in.yaml")
			want := mustInject(t, clean, opts)

			// The user's container sits exactly where the agent goes, with the agent's
			// image and arguments, so nothing but its other fields tells them apart.
			in := clean.DeepCopy()
			cfg, _ := ParseAnnotations(in.Annotations)
			user := agentContainer(cfg, opts, false)
			tc.mutate(&user)
			if tc.plain {
				in.Spec.Containers = append([]corev1.Container{user}, in.Spec.Containers...)
				in.Annotations[DefaultContainerAnnotation] = "app"
			} else {
				in.Spec.InitContainers = append([]corev1.Container{user}, in.Spec.InitContainers...)
			}

			got := mustInject(t, in, opts)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("the user's %q container was kept (-want +got):\n%s", AgentContainerName, diff)
			}
			if diff := cmp.Diff(got, mustInject(t, got, opts)); diff != "" {
				t.Errorf("re-injecting changed the pod (-first +second):\n%s", diff)
			}
		})
	}
}

// TestInjectReplacesUserTokenVolume: a projected volume that the user named like the
// agent's token volume is replaced, in place, by the computed one.
func TestInjectReplacesUserTokenVolume(t *testing.T) {
	opts := DefaultOptions()
	in := readPod(t, "testdata/golden/bare.in.yaml")
	in.Spec.ServiceAccountName = "default"
	in.Spec.Volumes = []corev1.Volume{
		{Name: TokenVolumeName, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: []corev1.VolumeProjection{
				{Secret: &corev1.SecretProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "other-credentials"}}},
				{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", Audience: "vault", ExpirationSeconds: ptr.To[int64](86400)}},
			}}}},
		{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
	}
	want := in.DeepCopy()
	want.Spec.Volumes[0] = tokenVolume()
	want = mustInject(t, want, opts)

	got := mustInject(t, in, opts)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("the user's %q volume was kept (-want +got):\n%s", TokenVolumeName, diff)
	}
	if diff := cmp.Diff(got, mustInject(t, got, opts)); diff != "" {
		t.Errorf("re-injecting changed the pod (-first +second):\n%s", diff)
	}
}

// TestGuaranteedFollowsKubernetesQoS: the injector's idea of a Guaranteed Pod is
// Kubernetes' own (kubectl's ComputePodQOS, on the Pod as the API server defaults it:
// a missing request is its limit).
func TestGuaranteedFollowsKubernetesQoS(t *testing.T) {
	rl := func(cpu, mem string) corev1.ResourceList {
		l := corev1.ResourceList{}
		if cpu != "" {
			l[corev1.ResourceCPU] = resource.MustParse(cpu)
		}
		if mem != "" {
			l[corev1.ResourceMemory] = resource.MustParse(mem)
		}
		return l
	}
	g := corev1.ResourceRequirements{Requests: rl("1", "1Gi"), Limits: rl("1", "1Gi")}
	tests := map[string]struct {
		init, apps []corev1.ResourceRequirements
		podLevel   *corev1.ResourceRequirements
		want       bool
	}{
		"all equal":                {apps: []corev1.ResourceRequirements{g, g}, init: []corev1.ResourceRequirements{g}, want: true},
		"limits only (defaulted)":  {apps: []corev1.ResourceRequirements{{Limits: rl("500m", "1Gi")}}, want: true},
		"request below limit":      {apps: []corev1.ResourceRequirements{g, {Requests: rl("1", "512Mi"), Limits: rl("1", "1Gi")}}},
		"no memory limit":          {apps: []corev1.ResourceRequirements{{Requests: rl("1", ""), Limits: rl("1", "")}}},
		"init container burstable": {apps: []corev1.ResourceRequirements{g}, init: []corev1.ResourceRequirements{{Requests: rl("100m", "")}}},
		"best effort":              {apps: []corev1.ResourceRequirements{{}}},
		"pod-level resources":      {apps: []corev1.ResourceRequirements{g}, podLevel: &corev1.ResourceRequirements{Limits: rl("2", "2Gi"), Requests: rl("2", "2Gi")}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			pod := &corev1.Pod{Spec: corev1.PodSpec{Resources: tc.podLevel}}
			for i, r := range tc.init {
				pod.Spec.InitContainers = append(pod.Spec.InitContainers, corev1.Container{Name: fmt.Sprintf("i%d", i), Resources: r})
			}
			for i, r := range tc.apps {
				pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: fmt.Sprintf("c%d", i), Resources: r})
			}
			if got := guaranteed(&pod.Spec); got != tc.want {
				t.Errorf("guaranteed = %v, want %v", got, tc.want)
			}
			defaulted := pod.DeepCopy()
			for _, cs := range [][]corev1.Container{defaulted.Spec.InitContainers, defaulted.Spec.Containers} {
				for i := range cs {
					for k, v := range cs[i].Resources.Limits {
						if _, ok := cs[i].Resources.Requests[k]; !ok {
							if cs[i].Resources.Requests == nil {
								cs[i].Resources.Requests = corev1.ResourceList{}
							}
							cs[i].Resources.Requests[k] = v
						}
					}
				}
			}
			if k8s := qos.ComputePodQOS(defaulted) == corev1.PodQOSGuaranteed && tc.podLevel == nil; k8s != tc.want {
				t.Errorf("the case is wrong: Kubernetes says Guaranteed=%v (pod-level resources: %v)", k8s, tc.podLevel != nil)
			}
		})
	}
}

// TestInjectExposesMetrics: the agent's metrics port is declared on its container and
// announced with the scrape annotations of plain Prometheus, unless the Pod sets any of
// them (then they stay as they are, and the admission warns), or the metrics are off
// or on loopback.
func TestInjectExposesMetrics(t *testing.T) {
	scrape := func(p *corev1.Pod) map[string]string {
		out := map[string]string{}
		for _, k := range []string{AnnotationPrometheusScrape, AnnotationPrometheusPort, AnnotationPrometheusPath} {
			if v, ok := p.Annotations[k]; ok {
				out[k] = v
			}
		}
		return out
	}
	ours := map[string]string{AnnotationPrometheusScrape: "true", AnnotationPrometheusPort: "9090", AnnotationPrometheusPath: "/metrics"}
	tests := map[string]struct {
		mutate     func(*corev1.Pod)
		opts       func(*Options)
		wantPort   int32 // 0: no containerPort
		wantScrape map[string]string
		warn       bool
	}{
		"default": {wantPort: 9090, wantScrape: ours},
		"app port 9090: next port": {mutate: func(p *corev1.Pod) {
			p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 9090, Protocol: corev1.ProtocolTCP}}
		}, wantPort: 9091, wantScrape: map[string]string{AnnotationPrometheusScrape: "true", AnnotationPrometheusPort: "9091", AnnotationPrometheusPath: "/metrics"}},
		"the Pod's own scrape annotations stay": {mutate: func(p *corev1.Pod) {
			p.Annotations[AnnotationPrometheusScrape] = "true"
			p.Annotations[AnnotationPrometheusPort] = "8080"
		}, wantPort: 9090, wantScrape: map[string]string{AnnotationPrometheusScrape: "true", AnnotationPrometheusPort: "8080"}, warn: true},
		"scrape false stays": {mutate: func(p *corev1.Pod) { p.Annotations[AnnotationPrometheusScrape] = "false" },
			wantPort: 9090, wantScrape: map[string]string{AnnotationPrometheusScrape: "false"}, warn: true},
		"leasehold.io/metrics false": {mutate: func(p *corev1.Pod) { p.Annotations[AnnotationMetrics] = "false" }, wantScrape: map[string]string{}},
		"leasehold.io/metrics false, own annotations: no warning": {mutate: func(p *corev1.Pod) {
			p.Annotations[AnnotationMetrics] = "false"
			p.Annotations[AnnotationPrometheusScrape] = "true"
		}, wantScrape: map[string]string{AnnotationPrometheusScrape: "true"}},
		"webhook flag 0":   {opts: func(o *Options) { o.AgentMetricsBindAddress = "0" }, wantScrape: map[string]string{}},
		"webhook loopback": {opts: func(o *Options) { o.AgentMetricsBindAddress = "127.0.0.1:9090" }, wantScrape: map[string]string{}},
		"hostNetwork":      {mutate: func(p *corev1.Pod) { p.Spec.HostNetwork = true }, wantScrape: map[string]string{}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			pod := readPod(t, "testdata/golden/bare.in.yaml")
			if tc.mutate != nil {
				tc.mutate(pod)
			}
			opts := DefaultOptions()
			if tc.opts != nil {
				tc.opts(&opts)
			}
			original := pod.DeepCopy()
			got := mustInject(t, pod, opts)
			var ports []corev1.ContainerPort
			ports = got.Spec.InitContainers[0].Ports
			var want []corev1.ContainerPort
			if tc.wantPort != 0 {
				want = []corev1.ContainerPort{{Name: "metrics", ContainerPort: tc.wantPort, Protocol: corev1.ProtocolTCP}}
			}
			if diff := cmp.Diff(want, ports); diff != "" {
				t.Errorf("agent ports (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantScrape, scrape(got)); diff != "" {
				t.Errorf("scrape annotations (-want +got):\n%s", diff)
			}
			w := ScrapeAnnotationsWarning(original, got)
			if (w != "") != tc.warn || (tc.warn && !strings.Contains(w, "PodMonitor")) {
				t.Errorf("warning %q, want one: %v", w, tc.warn)
			}
			// Re-injecting the result changes nothing and warns of nothing.
			again := mustInject(t, got, opts)
			if diff := cmp.Diff(got, again); diff != "" {
				t.Errorf("re-injection changed the Pod:\n%s", diff)
			}
			if w := ScrapeAnnotationsWarning(got, again); w != "" && !tc.warn {
				t.Errorf("re-injection warns: %s", w)
			}
		})
	}
}
