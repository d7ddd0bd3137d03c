package agent

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/go-logr/logr"

	"github.com/leasehold/leasehold/sidecar/api"
	"github.com/leasehold/leasehold/sidecar/kubeapi"
	"github.com/leasehold/leasehold/sidecar/lock"
)

// ClusterRole is the role an agent's ServiceAccount needs in its namespace.
const ClusterRole = "leasehold-agent"

// ProbeSocketMode is the mode of --probe-socket: only the agent's own user (the exec
// probes run as it) may connect.
const ProbeSocketMode = 0o600

// ProbeConnections caps the probe socket's connections; the kubelet makes at most one
// per probe at a time.
const ProbeConnections = 16

// Run opens the agent's listeners, starts its parts (the lock manager, the RBAC access
// check, the Event recorder, the became-ready log, the API, probe and metrics servers)
// and serves until ctx ends (SIGTERM). Then it releases every hold, stops the servers
// (the event streams first) and the other parts, removes the sockets and returns. A
// listener that cannot be opened is an error, returned before any part starts.
func Run(ctx context.Context, o *Options, log logr.Logger) error {
	if err := o.Validate(); err != nil {
		return err
	}
	began := time.Now()
	cfg, err := kubeapi.Config(o.Kubeconfig)
	if err != nil {
		return err
	}
	cfg.QPS, cfg.Burst = float32(o.QPS), o.Burst
	cfg.UserAgent = "leasehold-agent"
	m := newMetrics()
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return countingTransport{rt, m} })
	kc, err := kubeapi.New(cfg, o.Namespace)
	if err != nil {
		return err
	}
	var recorder *kubeapi.EventRecorder
	if o.Events {
		recorder = kc.NewEventRecorder(o.PodName, o.PodUID, "leasehold-agent", log)
	}

	mgr, err := newLockManager(o, kc, m, recorder, log)
	if err != nil {
		return err
	}
	eng := &engine{Manager: mgr, m: m}
	m.watch(eng)

	// The client for the Pod's containers, before the startup probe can pass: the
	// containers that start after the agent find it in place.
	if err := installCLI(o, log); err != nil {
		return err
	}

	// Every listener before any part starts, so that /healthz answers while the locks
	// sync, and a listener that cannot be opened stops the agent before it takes a lock.
	ls, err := openListeners(o)
	if err != nil {
		return err
	}

	// The parts, each running until stopped below.
	background := []*part{
		startPart(ctx, log, "locks", runs(mgr.Run)),
		startPart(ctx, log, "access check", runs(func(ctx context.Context) { eng.checkAccess(ctx, kc, o, log) })),
		startPart(ctx, log, "ready log", runs(func(ctx context.Context) { logWhenReady(ctx, eng, o, began, log) })),
	}
	if recorder != nil {
		// Events are posted until the holds are released at shutdown.
		background = append(background, startPart(ctx, log, "events", runs(recorder.Run)))
	}
	handler := api.NewHandler(eng, log, forbiddenHint(o))
	apiSrv := startPart(ctx, log, "api", apiServer(o, handler, ls.api, log))
	var probeSrv, metricsSrv *part
	if ls.probes != nil {
		probeSrv = startPart(ctx, log, "probes", probeServer(o, handler, ls.probes, log))
	}
	if ls.metrics != nil {
		metricsSrv = startPart(ctx, log, "metrics", metricsServer(o, m, ls.metrics, log))
	}
	log.Info("Serving", "socket", o.Socket, "tcpPort", o.TCPPort, "metricsBindAddress", o.MetricsBindAddress,
		"identity", o.Identity(), "mutexes", o.Locks, "leaders", o.Leader, "semaphores", o.Semaphores)

	<-ctx.Done()
	// The order matters: the holds are released while the API still answers, the
	// event streams end before the servers wait for their connections, and the lock
	// manager and the Event recorder (which posts the releases) stop last.
	log.Info("Shutting down: releasing every hold", "pod", o.PodName)
	sctx, cancel := context.WithTimeout(context.Background(), o.ShutdownTimeout)
	defer cancel()
	if err := mgr.Shutdown(sctx); err != nil {
		log.Error(err, "Failed to release some holds; others can take them after lease-duration")
	}
	stopParts(sctx, apiSrv) // ends the event streams first
	stopParts(sctx, metricsSrv)
	stopParts(sctx, probeSrv)
	stopParts(context.Background(), background...)
	ls.close()
	log.Info("Stopped", "pod", o.PodName)
	return nil
}

// logWhenReady logs the time to ready once, for operators and the start-to-ready
// benchmark.
func logWhenReady(ctx context.Context, eng *engine, o *Options, began time.Time, log logr.Logger) {
	for d := time.Millisecond; ctx.Err() == nil; d = min(2*d, 100*time.Millisecond) {
		if eng.Ready() == nil {
			log.Info("Became ready", "pod", o.PodName, "locks", eng.Names(), "startToReady", time.Since(began).String())
			return
		}
		time.Sleep(d)
	}
}

// newLockManager makes the manager of o's locks; their events are counted in m and
// posted on the Pod by recorder (nil with --events=false).
func newLockManager(o *Options, kc *kubeapi.Client, m *metrics, recorder *kubeapi.EventRecorder, log logr.Logger) (*lock.Manager, error) {
	// The kind of a lock, a label of its hold-duration metric, is the manager's: mgr is
	// set before any lock runs, so before any event.
	var mgr *lock.Manager
	mode := func(name string) lock.Mode {
		if k, err := mgr.Locker(name); err == nil {
			return k.Mode()
		}
		return ""
	}
	mgr, err := lock.NewManager(lock.ManagerConfig{
		Namespace: o.Namespace, Identity: o.Identity(), Mutexes: o.Locks, Leaders: o.Leader, Semaphores: o.Semaphores,
		LeaseDuration: o.LeaseDuration, RenewDeadline: o.RenewDeadline, RetryPeriod: o.RetryPeriod, Grace: o.Grace,
		Client: kc, Log: log,
		OnHolderChange: func(name string) { m.holderChanges.inc(name) },
		OnEvent: func(ev lock.Event) {
			m.event(ev, mode(ev.Lock))
			if recorder == nil || ev.Type == lock.EventShutdown {
				return
			}
			reason := map[lock.EventType]string{lock.EventAcquired: "LockAcquired", lock.EventLost: "LockLost",
				lock.EventReleased: "LockReleased", lock.EventJeopardy: "LockJeopardy", lock.EventSafe: "LockSafe"}[ev.Type]
			etype := "Normal"
			if ev.Type == lock.EventLost || ev.Type == lock.EventJeopardy {
				// Warnings are posted however busy the lock is, and retried until the API
				// server takes writes again (a jeopardy Event is written then).
				etype = "Warning"
			}
			msg := fmt.Sprintf("Lock %s %s (token %d)", ev.Lock, ev.Type, ev.Token)
			if ev.Reason != "" {
				msg += ": " + ev.Reason
			}
			recorder.Record(kubeapi.PodEvent{Type: etype, Reason: reason, Message: msg})
		},
	})
	return mgr, err
}

// forbiddenHint tells how to grant the agent the access it lacks, for the API's 403s.
func forbiddenHint(o *Options) string {
	sa := o.ServiceAccount
	if sa == "" {
		sa = inClusterServiceAccount()
	}
	return fmt.Sprintf("bind the ClusterRole %s to the ServiceAccount %s in namespace %s with a RoleBinding "+
		"(kubectl create rolebinding leasehold-agent -n %s --clusterrole=%s --serviceaccount=%s:%s), "+
		"or apply the Role narrowed to this Pod's locks that `kubectl leasehold rbac -f <workload manifest>` prints",
		ClusterRole, sa, o.Namespace, o.Namespace, ClusterRole, o.Namespace, strings.TrimPrefix(sa, o.Namespace+"/"))
}

func inClusterServiceAccount() string {
	ns, _ := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
	if len(ns) == 0 {
		return "<the Pod's ServiceAccount>"
	}
	return string(ns) + "/<the Pod's ServiceAccount>"
}

// Probe does one GET of path on the socket: exit status 0 on 2xx, 1 otherwise.
func Probe(socket, path string, out io.Writer) int {
	c := &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		}},
	}
	resp, err := c.Get("http://leasehold" + path)
	if err != nil {
		fmt.Fprintf(out, "probe %s on %s: %v\n", path, socket, err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	_, _ = out.Write(body)
	if resp.StatusCode/100 != 2 {
		return 1
	}
	return 0
}

type countingTransport struct {
	rt http.RoundTripper
	m  *metrics
}

func (c countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	method, verb := r.Method, ""
	resource, named := resourceOf(r.URL.Path)
	switch {
	case r.URL.Query().Get("watch") == "true":
		method, verb = "WATCH", "watch"
	case r.Method == http.MethodGet && named:
		verb = "get"
	case r.Method == http.MethodGet:
		verb = "list"
	case r.Method == http.MethodPost:
		verb = "create"
	case r.Method == http.MethodPut:
		verb = "update"
	default:
		verb = strings.ToLower(r.Method)
	}
	start := time.Now()
	resp, err := c.rt.RoundTrip(r)
	code := 0
	if resp != nil {
		code = resp.StatusCode
	}
	c.m.request(method, verb, resource, code, err, time.Since(start))
	return resp, err
}

// resourceOf names the resource of an API path, and whether the path names one object:
// /apis/g/v/namespaces/ns/leases/x -> leases, true;
// /apis/g/v/selfsubjectaccessreviews -> selfsubjectaccessreviews, false.
func resourceOf(path string) (string, bool) {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	for i, p := range parts {
		if p == "namespaces" && i+2 < len(parts) {
			return parts[i+2], i+3 < len(parts)
		}
	}
	if len(parts) > 0 {
		return parts[len(parts)-1], false
	}
	return "", false
}
