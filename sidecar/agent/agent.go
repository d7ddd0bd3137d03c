package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/leasehold/leasehold/sidecar/api"
	"github.com/leasehold/leasehold/sidecar/kubeapi"
	"github.com/leasehold/leasehold/sidecar/listen"
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

// Run serves the agent until ctx ends (SIGTERM), then tells the event streams,
// releases every hold and returns.
func Run(ctx context.Context, o *Options, log logr.Logger) error {
	if err := o.Validate(); err != nil {
		return err
	}
	start := time.Now()
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

	modes := map[string]lock.Mode{}
	for _, n := range o.Locks {
		modes[n] = lock.ModeMutex
	}
	for _, n := range o.Leader {
		modes[n] = lock.ModeLeader
	}
	for n := range o.Semaphores {
		modes[n] = lock.ModeSemaphore
	}
	mgr, err := lock.NewManager(lock.ManagerConfig{
		Namespace: o.Namespace, Identity: o.Identity(), Mutexes: o.Locks, Leaders: o.Leader, Semaphores: o.Semaphores,
		LeaseDuration: o.LeaseDuration, RenewDeadline: o.RenewDeadline, RetryPeriod: o.RetryPeriod,
		Client: kc, Log: log,
		OnHolderChange: func(name string) { m.holderChanges.inc(name) },
		OnEvent: func(ev lock.Event) {
			m.event(ev, modes[ev.Lock])
			if recorder == nil || ev.Type == lock.EventShutdown {
				return
			}
			reason := map[lock.EventType]string{lock.EventAcquired: "LockAcquired", lock.EventLost: "LockLost", lock.EventReleased: "LockReleased"}[ev.Type]
			etype := "Normal"
			if ev.Type == lock.EventLost {
				etype = "Warning"
			}
			msg := fmt.Sprintf("Lock %s %s (token %d)", ev.Lock, ev.Type, ev.Token)
			if ev.Reason != "" {
				msg += ": " + ev.Reason
			}
			recorder.Record(kubeapi.PodEvent{Type: etype, Reason: reason, Message: msg})
		},
	})
	if err != nil {
		return err
	}

	sa := o.ServiceAccount
	if sa == "" {
		sa = inClusterServiceAccount()
	}
	hint := fmt.Sprintf("bind the ClusterRole %s to the ServiceAccount %s in namespace %s with a RoleBinding "+
		"(kubectl create rolebinding leasehold-agent -n %s --clusterrole=%s --serviceaccount=%s:%s), "+
		"or apply the Role narrowed to this Pod's locks that `kubectl leasehold rbac -f <workload manifest>` prints",
		ClusterRole, sa, o.Namespace, o.Namespace, ClusterRole, o.Namespace, strings.TrimPrefix(sa, o.Namespace+"/"))
	eng := &engine{Manager: mgr, m: m}
	m.watch(eng)

	// The client for the Pod's containers, before the startup probe can pass: the
	// containers that start after the agent find it in place.
	installCLI(o, log)

	// Listeners first, so that /healthz answers while the locks sync.
	sock, err := listen.Unix(o.Socket, listen.SocketMode)
	if err != nil {
		return err
	}
	listeners := []net.Listener{sock}
	if o.TCPPort > 0 {
		l, err := listen.Loopback(net.JoinHostPort("127.0.0.1", strconv.Itoa(o.TCPPort)))
		if err != nil {
			_ = sock.Close()
			return err
		}
		listeners = append(listeners, l)
	}

	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRun()
	var wg sync.WaitGroup
	wg.Go(func() { mgr.Run(runCtx) })
	wg.Go(func() { eng.checkAccess(runCtx, kc, o, log) })
	if recorder != nil {
		// Events are posted until the holds are released at shutdown.
		wg.Go(func() { recorder.Run(runCtx) })
	}
	wg.Go(func() {
		// Log the time to ready once, for operators and the start-to-ready benchmark.
		for d := time.Millisecond; runCtx.Err() == nil; d = min(2*d, 100*time.Millisecond) {
			if eng.Ready() == nil {
				log.Info("Became ready", "pod", o.PodName, "locks", mgr.Names(), "startToReady", time.Since(start).String())
				return
			}
			time.Sleep(d)
		}
	})

	streamCtx, stopStreams := context.WithCancel(context.WithoutCancel(ctx))
	defer stopStreams()
	handler := api.NewHandler(eng, log, hint)
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 2 * time.Second,
		IdleTimeout:       90 * time.Second,
		MaxHeaderBytes:    8 << 10,
		BaseContext:       func(net.Listener) context.Context { return streamCtx },
	}
	limit := listen.NewConnLimit(o.MaxConnections) // floods get 503, open holds stay served
	for _, l := range listeners {
		wg.Go(func() {
			if err := srv.Serve(limit.Wrap(l)); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error(err, "Failed to serve", "address", l.Addr().String())
			}
		})
	}
	// The probe socket: the same handler for /healthz and /readyz only, with a cap of
	// its own, so that clients at --max-connections never fail the kubelet's probes
	// (a failed startup probe restarts the agent and drops its leader locks).
	var probeSrv *http.Server
	if o.ProbeSocket != "" {
		pl, err := listen.Unix(o.ProbeSocket, ProbeSocketMode)
		if err != nil {
			_ = srv.Close()
			stopRun()
			wg.Wait()
			return fmt.Errorf("--probe-socket: %w", err)
		}
		probeSrv = &http.Server{
			Handler:           handler.Probes(),
			ReadHeaderTimeout: 2 * time.Second,
			IdleTimeout:       10 * time.Second,
			MaxHeaderBytes:    4 << 10,
		}
		probeLimit := listen.NewConnLimit(ProbeConnections)
		wg.Go(func() {
			if err := probeSrv.Serve(probeLimit.Wrap(pl)); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error(err, "Failed to serve probes", "socket", o.ProbeSocket)
			}
		})
	}
	var metricsSrv *http.Server
	if o.MetricsOn() {
		// On every address of the Pod (the webhook passes ":<port>"): read-only
		// metrics, never the lock API.
		ml, err := listen.TCP(o.MetricsBindAddress)
		if err != nil {
			_ = srv.Close()
			if probeSrv != nil {
				_ = probeSrv.Close()
			}
			stopRun()
			wg.Wait()
			return fmt.Errorf("--metrics-bind-address: %w", err)
		}
		metricsSrv = &http.Server{
			Handler:           m.handler(),
			ReadHeaderTimeout: 2 * time.Second,
			ReadTimeout:       5 * time.Second,
			WriteTimeout:      10 * time.Second,
			IdleTimeout:       90 * time.Second,
			MaxHeaderBytes:    8 << 10,
		}
		wg.Go(func() { _ = metricsSrv.Serve(ml) })
	}
	log.Info("Serving", "socket", o.Socket, "tcpPort", o.TCPPort, "metricsBindAddress", o.MetricsBindAddress,
		"identity", o.Identity(), "mutexes", o.Locks, "leaders", o.Leader, "semaphores", o.Semaphores)

	<-ctx.Done()
	log.Info("Shutting down: releasing every hold", "pod", o.PodName)
	sctx, cancel := context.WithTimeout(context.Background(), o.ShutdownTimeout)
	defer cancel()
	if err := mgr.Shutdown(sctx); err != nil {
		log.Error(err, "Failed to release some holds; others can take them after lease-duration")
	}
	stopStreams()
	_ = srv.Shutdown(sctx)
	if metricsSrv != nil {
		_ = metricsSrv.Shutdown(sctx)
	}
	if probeSrv != nil {
		_ = probeSrv.Shutdown(sctx)
	}
	stopRun()
	wg.Wait()
	_ = os.Remove(o.Socket)
	if o.ProbeSocket != "" {
		_ = os.Remove(o.ProbeSocket)
	}
	log.Info("Stopped", "pod", o.PodName)
	return nil
}

func inClusterServiceAccount() string {
	ns, _ := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
	if len(ns) == 0 {
		return "<the Pod's ServiceAccount>"
	}
	return string(ns) + "/<the Pod's ServiceAccount>"
}

// engine adds the RBAC check to the lock manager's readiness, and times acquire calls.
type engine struct {
	*lock.Manager
	m      *metrics
	denied atomic.Pointer[string]
	// allowed is set once the API server said every request of leaseAccess is allowed:
	// until then the agent is not ready, even when its Leases are synced.
	allowed atomic.Bool
}

// Acquire is the manager's, timed for leasehold_lock_acquire_wait_seconds.
func (e *engine) Acquire(ctx context.Context, name string, opts lock.AcquireOptions) (*lock.Hold, lock.State, error) {
	start := time.Now()
	h, s, err := e.Manager.Acquire(ctx, name, opts)
	e.m.acquired(name, err, time.Since(start))
	return h, s, err
}

func (e *engine) Ready() error {
	if msg := e.denied.Load(); msg != nil {
		return fmt.Errorf("%w: %s", lock.ErrForbidden, *msg)
	}
	if err := e.Manager.Ready(); err != nil {
		return err
	}
	if !e.allowed.Load() {
		return fmt.Errorf("%w: access to Leases not yet reviewed by the API server", lock.ErrUnavailable)
	}
	return nil
}

// leaseAccess is every request the agent makes on Leases: list, watch and update of each
// lock's Lease by name (so that a Role narrowed to the locks with resourceNames, as
// `kubectl leasehold rbac` prints it, passes), and create, which has no name.
func leaseAccess(locks []string) []kubeapi.LeaseAccess {
	access := []kubeapi.LeaseAccess{{Verb: "create"}}
	for _, name := range locks {
		for _, verb := range []string{"list", "watch", "update"} {
			access = append(access, kubeapi.LeaseAccess{Verb: verb, Name: name})
		}
	}
	return access
}

// accessReviewTimeout bounds one review of the agent's access. Not shorter: when a
// cluster's agents start at once the review waits in the API server's queues, and one
// given up after 5 s (as before) was work done for nothing and asked again.
const accessReviewTimeout = 30 * time.Second

// checkAccess asks the API server whether the agent may do what it does with the
// Leases of its locks, until it may. Between attempts it waits a jittered, growing
// pause (as the lock engine's watch does), so that agents started together and refused
// together (a busy API server answering 429) do not ask again all at the same moment.
func (e *engine) checkAccess(ctx context.Context, kc *kubeapi.Client, o *Options, log logr.Logger) {
	access := leaseAccess(e.LeaseNames())
	backoff := wait.Backoff{Duration: o.RetryPeriod / 2, Factor: 2, Jitter: 1, Steps: math.MaxInt32, Cap: 2 * o.RetryPeriod}.DelayFunc()
	for ctx.Err() == nil {
		actx, cancel := context.WithTimeout(ctx, accessReviewTimeout)
		denied, err := kc.DeniedLeaseAccess(actx, access...)
		cancel()
		switch {
		case err != nil:
			log.V(1).Info("Failed to check access to Leases", "err", err.Error())
		case len(denied) > 0:
			what := make([]string, len(denied))
			for i, d := range denied {
				what[i] = d.String()
			}
			msg := fmt.Sprintf("may not %s in namespace %s", strings.Join(what, ", "), o.Namespace)
			e.denied.Store(&msg)
			log.Info("Not allowed to write Leases", "namespace", o.Namespace, "denied", what)
		default:
			e.denied.Store(nil)
			e.allowed.Store(true)
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff()):
		}
	}
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
