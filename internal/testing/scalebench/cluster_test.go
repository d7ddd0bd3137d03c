//go:build scalebench

package scalebench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/leasehold/leasehold/internal/testing/testenv"
)

// agentUser is the identity the agents and client-go electors use with
// SCALE_AGENT_USER=serviceaccount: a ServiceAccount's, so that the API server's priority
// and fairness treats them as it treats Pods (flow schema "service-accounts", priority
// level workload-low). By default they use envtest's administrator (system:masters,
// exempt from priority and fairness), as the earlier measurements of the issue did: on
// this 2-core machine, 1,000 agents as one ServiceAccount starting at once do not
// recover (BENCHMARKS.md, Scale).
const agentUser = "system:serviceaccount:scale:app"

var asServiceAccount = os.Getenv("SCALE_AGENT_USER") == "serviceaccount"

func agentIdentity() string {
	if asServiceAccount {
		return agentUser
	}
	return "envtest's administrator (system:masters, exempt from API priority and fairness)"
}

// agentNice (SCALE_AGENT_NICE, 0 to 19) is the nice value the agents and the client-go
// electors run at. On a cluster the agents run on the nodes and kube-apiserver on the
// control plane; here they share 2 CPUs, and 1,000 agent processes reconnecting at
// once take kube-apiserver's CPU. A nice value lets kube-apiserver and etcd go first,
// as if they had their own cores (the agents still compete with each other and with
// the benchmark).
var agentNice = niceEnv("SCALE_AGENT_NICE", 0)

// renice sets a started process's nice value to agentNice.
func renice(t testing.TB, pid int) {
	if agentNice == 0 {
		return
	}
	if err := syscall.Setpriority(syscall.PRIO_PROCESS, pid, agentNice); err != nil {
		t.Fatalf("SCALE_AGENT_NICE=%d: %v", agentNice, err)
	}
}

// stopGrace is how long kube-apiserver may take to stop gracefully before it is killed.
var stopGrace = durEnv("SCALE_STOP_GRACE", time.Second)

// cluster is the control plane of the benchmark: envtest's etcd and kube-apiserver,
// with an audit log of every Lease request (the timelines of the cold start, the
// restart and the watch expiry come from it), and a way to restart kube-apiserver
// alone.
type cluster struct {
	t          testing.TB
	env        *envtest.Environment
	admin      *rest.Config
	cs         kubernetes.Interface
	kubeconfig string // the agents' (agentUser)
	agentCfg   *rest.Config
	audit      string
	dir        string

	apiPath string
	apiArgs []string
	apiPID  int
	etcdPID int
	// restarted is the kube-apiserver this benchmark started itself after a restart.
	restarted *exec.Cmd
	exited    chan struct{}
}

const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  resources:
  - group: coordination.k8s.io
    resources: ["leases"]
- level: Metadata
  resources:
  - group: authorization.k8s.io
    resources: ["selfsubjectaccessreviews"]
- level: Metadata
  resources:
  - group: ""
    resources: ["events"]
- level: None
`

func startCluster(t testing.TB, dir string) *cluster {
	t.Helper()
	env, err := testenv.New()
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, env: env, dir: dir, audit: filepath.Join(dir, "audit.log")}
	policy := filepath.Join(dir, "audit-policy.yaml")
	if err := os.WriteFile(policy, []byte(auditPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	args := env.ControlPlane.GetAPIServer().Configure()
	args.Set("audit-policy-file", policy)
	args.Set("audit-log-path", c.audit)
	args.Set("audit-log-format", "json")
	c.admin, err = env.Start()
	if err != nil {
		t.Fatalf("start envtest: %v", err)
	}
	t.Cleanup(c.stop)
	// Killed (SIGINT, SIGTERM): stop etcd and kube-apiserver, which envtest does not tie
	// to this process; the agents, the electors and a restarted kube-apiserver die with
	// it (Pdeathsig).
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sig
		c.stop()
		os.Exit(2)
	}()
	c.admin.QPS, c.admin.Burst = 200, 400
	c.cs = kubernetes.NewForConfigOrDie(c.admin)
	if c.apiPID, err = childPID("kube-apiserver"); err != nil {
		t.Fatal(err)
	}
	if c.etcdPID, err = childPID("etcd"); err != nil {
		t.Fatal(err)
	}
	if c.apiArgs, err = cmdline(c.apiPID); err != nil {
		t.Fatal(err)
	}
	c.apiPath = c.apiArgs[0]
	c.apiArgs = c.apiArgs[1:]

	// The agents' rights: those `kubectl leasehold rbac` grants, in every namespace.
	ctx := context.Background()
	if _, err := c.cs.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "scale-agent"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "list", "watch", "create", "update"}},
			{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "scale-agent"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "scale-agent"},
		Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: agentUser}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	u, err := env.AddUser(envtest.User{Name: agentUser, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:scale"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.agentCfg = u.Config()
	if !asServiceAccount {
		c.agentCfg = c.admin
	}
	c.kubeconfig = filepath.Join(dir, "agent.kubeconfig")
	if err := testenv.WriteKubeconfig(c.kubeconfig, c.agentCfg.Host, c.agentCfg); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *cluster) stop() {
	if c.restarted != nil {
		_ = c.restarted.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.exited:
		case <-time.After(20 * time.Second):
			_ = c.restarted.Process.Kill()
			<-c.exited
		}
	}
	_ = c.env.Stop()
}

// restartAPIServer stops kube-apiserver (SIGTERM, as the kubelet stops a static Pod)
// and starts it again with the same flags, certificates and port; etcd keeps running.
// It returns when the new process answers /readyz, with the moments it was signalled,
// exited and became ready.
func (c *cluster) restartAPIServer() (signalled, exited, ready time.Time) {
	t := c.t
	p, err := os.FindProcess(c.apiPID)
	if err != nil {
		t.Fatal(err)
	}
	signalled = time.Now()
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// With watches open, a graceful shutdown waits up to kube-apiserver's request
	// timeout (60 s) for their connections; the agents lose the server at SIGTERM
	// either way (it stops listening and sends GOAWAY), so after stopGrace it is killed,
	// as a kubelet does at the end of a static Pod's grace period.
	killAt := time.Now().Add(stopGrace)
	for alive(c.apiPID) {
		if time.Now().After(killAt) {
			_ = p.Signal(syscall.SIGKILL)
			killAt = time.Now().Add(time.Hour)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if c.restarted != nil {
		<-c.exited
	}
	exited = time.Now()
	out, err := os.OpenFile(filepath.Join(c.dir, "kube-apiserver.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(c.apiPath, c.apiArgs...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	out.Close()
	c.restarted, c.exited = cmd, make(chan struct{})
	done := c.exited
	go func() { _ = cmd.Wait(); close(done) }()
	c.apiPID = cmd.Process.Pid
	c.profileRestart()
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		cancel()
		if err == nil {
			return signalled, exited, time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("kube-apiserver not ready 60s after its restart: %v", err)
		}
	}
}

// profileRestart, with SCALE_RESTART_PROFILE=path, takes a CPU profile of the new
// kube-apiserver from its first answer (its /debug/pprof, on by default), for
// SCALE_RESTART_PROFILE_SECONDS (10), and writes it to path (read it with
// `go tool pprof -top path`), in the background.
func (c *cluster) profileRestart() {
	path := os.Getenv("SCALE_RESTART_PROFILE")
	if path == "" {
		return
	}
	secs := os.Getenv("SCALE_RESTART_PROFILE_SECONDS")
	if secs == "" {
		secs = "10"
	}
	go func() {
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			raw, err := c.cs.Discovery().RESTClient().Get().AbsPath("/debug/pprof/profile").Param("seconds", secs).DoRaw(ctx)
			cancel()
			if err != nil {
				continue
			}
			if err := os.WriteFile(path, raw, 0o644); err != nil {
				c.t.Logf("write the restart profile: %v", err)
			}
			c.t.Logf("CPU profile of the restarted kube-apiserver (%s s from its first answer): %s", secs, path)
			return
		}
		c.t.Logf("no CPU profile of the restarted kube-apiserver: it did not answer /debug/pprof within 30 s")
	}()
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// A zombie (state Z) has exited.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] != "Z"
}

// childPID finds this process's child named comm (envtest's etcd, kube-apiserver).
func childPID(comm string) (int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		name := s[strings.IndexByte(s, '(')+1 : strings.LastIndexByte(s, ')')]
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if name == comm && len(f) > 1 && f[1] == strconv.Itoa(os.Getpid()) {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no child process %s of this test", comm)
}

func cmdline(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"), nil
}

// cpuSeconds is the user + system CPU time of pid so far.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	// Fields after the command: state is f[0]; utime and stime are the 14th and 15th
	// fields of the whole line, f[11] and f[12] here. Clock ticks are 1/100 s on Linux.
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100
}

// memKiB returns the VmRSS of pid and, from smaps_rollup, its PSS, both in KiB.
func memKiB(pid int) (rss, pss int) {
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				rss, _ = strconv.Atoi(strings.Fields(v)[0])
			}
		}
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid)); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "Pss:"); ok {
				pss, _ = strconv.Atoi(strings.Fields(v)[0])
			}
		}
	}
	return rss, pss
}

// apiMetrics are the API server's own counters: requests by verb, resource and code,
// and the open long-running requests (watches) by verb and resource.
type apiMetrics struct {
	requests map[string]float64 // "VERB resource code"
	open     map[string]float64 // "VERB resource"
}

// scrape reads kube-apiserver's /metrics, keeping only the two families it needs.
func (c *cluster) scrape() apiMetrics {
	m := apiMetrics{requests: map[string]float64{}, open: map[string]float64{}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	raw, err := c.cs.Discovery().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		// An overloaded API server: the counts are missing, the run goes on.
		c.t.Logf("scrape kube-apiserver /metrics: %v", err)
		return m
	}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		var into map[string]float64
		var keys []string
		switch {
		case strings.HasPrefix(l, "apiserver_request_total{"):
			into, keys = m.requests, []string{"verb", "resource", "code"}
		case strings.HasPrefix(l, "apiserver_longrunning_requests{"):
			into, keys = m.open, []string{"verb", "resource"}
		default:
			continue
		}
		lbl := labels(l[strings.IndexByte(l, '{')+1 : strings.LastIndexByte(l, '}')])
		v, _ := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = lbl[k]
		}
		into[strings.Join(parts, " ")] += v
	}
	return m
}

func labels(s string) map[string]string {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if ok {
			out[k] = strings.Trim(v, `"`)
		}
	}
	return out
}

// sub is after minus before, keeping keys that changed.
func sub(after, before map[string]float64) map[string]float64 {
	d := map[string]float64{}
	for k, v := range after {
		if x := v - before[k]; x != 0 {
			d[k] = x
		}
	}
	return d
}

// total sums the entries whose key has every one of the given words.
func total(m map[string]float64, words ...string) float64 {
	t := 0.0
next:
	for k, v := range m {
		f := strings.Fields(k)
		for _, w := range words {
			found := false
			for _, x := range f {
				if x == w {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		t += v
	}
	return t
}

// summary renders the counts by "VERB resource code" compactly, largest first.
func summary(m map[string]float64, per float64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] })
	var parts []string
	for _, k := range keys {
		if per > 0 {
			parts = append(parts, fmt.Sprintf("%s: %.0f (%.2f)", k, m[k], m[k]/per))
		} else {
			parts = append(parts, fmt.Sprintf("%s: %.0f", k, m[k]))
		}
	}
	return strings.Join(parts, ", ")
}

// auditEvent is the part of an audit event the benchmark reads.
type auditEvent struct {
	Stage     string `json:"stage"`
	Verb      string `json:"verb"`
	UserAgent string `json:"userAgent"`
	ObjectRef struct {
		Resource  string `json:"resource"`
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"objectRef"`
	ResponseStatus struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
	Received time.Time `json:"requestReceivedTimestamp"`
}

// auditSince reads the audit log's events of requests received in [from, to), one per
// request: ResponseComplete, or ResponseStarted for a watch (its opening).
func (c *cluster) auditSince(from, to time.Time) []auditEvent {
	f, err := os.Open(c.audit)
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	var out []auditEvent
	r := bufio.NewReaderSize(f, 1<<20)
	for {
		line, err := r.ReadBytes('\n')
		if len(line) > 0 {
			var ev auditEvent
			if json.Unmarshal(line, &ev) == nil && !ev.Received.Before(from) && ev.Received.Before(to) {
				if ev.Verb == "watch" && ev.Stage == "ResponseStarted" || ev.Verb != "watch" && ev.Stage == "ResponseComplete" ||
					ev.Verb == "watch" && ev.Stage == "ResponseComplete" && ev.ResponseStatus.Code != 200 {
					out = append(out, ev)
				}
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			c.t.Fatal(err)
		}
	}
	return out
}
