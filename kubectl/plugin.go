package kubectl

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"

	"github.com/leasehold/leasehold/internal/contract"
	"github.com/leasehold/leasehold/internal/leaserecord"
	"github.com/leasehold/leasehold/internal/version"
)

// The label and annotation that agents write on their Leases (the contract defines them).
const (
	LabelManagedBy = contract.LabelManagedBy
	ManagedByValue = contract.ManagedBy
	AnnotationMode = contract.AnnotationMode
)

// What the admission policy of manifests/base (admission-policy.yaml) asks of operators:
// a ServiceAccount ends another Pod's hold, or deletes a Lease, only with the custom verb
// VerbForceRelease on leases, which ClusterRole OperatorClusterRole grants. People and
// user-certificate identities are not restricted by the policy: RBAC's update is enough.
const (
	VerbForceRelease    = "force-release"
	OperatorClusterRole = "leasehold-operator"
)

// Options holds the plugin's flags and streams.
type Options struct {
	ConfigFlags   *genericclioptions.ConfigFlags
	AllNamespaces bool
	AllLeases     bool
	Watch         bool
	Yes           bool

	// rbac
	Filename       string
	Name           string
	Locks, Leader  []string
	Semaphores     []string
	ServiceAccount string

	genericiooptions.IOStreams
	Clock  clock.PassiveClock
	client kubernetes.Interface
}

// NewCommand returns the `kubectl leasehold` command tree.
func NewCommand(streams genericiooptions.IOStreams) *cobra.Command {
	o := &Options{
		ConfigFlags: genericclioptions.NewConfigFlags(true),
		IOStreams:   streams,
		Clock:       clock.RealClock{},
	}
	root := &cobra.Command{
		Use:   "kubectl-leasehold",
		Short: "List and force-release Leasehold locks (coordination.k8s.io Leases)",
		Long: `kubectl leasehold lists the locks that Leasehold agents hold: the lock (the Lease name),
its mode (mutex or leader), the holder Pod, the fencing token, how long it has been held and
how long the current hold has left before other Pods may take it.`,
		Example: `  kubectl leasehold                 # locks in the current namespace
  kubectl leasehold -A --watch      # every namespace, following changes
  kubectl leasehold release db-migration -n shop`,
		SilenceUsage: true,
		Args:         cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.complete(); err != nil {
				return err
			}
			return o.List(cmd.Context())
		},
	}
	root.PersistentFlags().BoolVarP(&o.AllNamespaces, "all-namespaces", "A", false, "List locks in every namespace.")
	root.Flags().BoolVarP(&o.Watch, "watch", "w", false, "After listing, print each change as it happens.")
	root.PersistentFlags().BoolVar(&o.AllLeases, "all-leases", false, "Include Leases not written by a Leasehold agent (e.g. client-go leader election).")
	o.ConfigFlags.AddFlags(root.PersistentFlags())

	release := &cobra.Command{
		Use:   "release LOCK",
		Short: "Force-release a lock: end its holder's Lease so that a waiting Pod can take it",
		Long: `release ends the current hold of LOCK by writing an empty holder to its Lease, the way a
clean release does (a conditional write: it fails if the Lease changed since it was read).

Safety: the holder's agent stops reporting the lock as held as soon as it sees the change,
but the holder's process may still be inside its critical section. Only a store that checks
fencing tokens is protected from its late writes. Use this to clear a lock whose holder is
stuck, not to take a lock from a healthy holder.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.complete(); err != nil {
				return err
			}
			return o.Release(cmd.Context(), args[0])
		},
	}
	release.Flags().BoolVarP(&o.Yes, "yes", "y", false, "Do not ask for confirmation.")
	root.AddCommand(release)

	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the version of kubectl-leasehold",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(o.Out, version.String("kubectl-leasehold"))
		},
	})

	rbac := &cobra.Command{
		Use:   "rbac (-f FILE | --name NAME --locks A,B --leader C)",
		Short: "Print the least-privilege ServiceAccount, Role and RoleBinding for a workload's agents",
		Long: `rbac prints, for each workload of a manifest whose Pod template declares locks
(leasehold.io/locks, leasehold.io/leader), the RBAC its Leasehold agents need and no more:
get, list, watch and update of its own Leases by name (resourceNames), create of Leases
(RBAC cannot narrow create by name) and create of Events. It binds them to a ServiceAccount
of the workload's own: the template's serviceAccountName, or else a new one named after the
workload (never the namespace's default, which every Pod that names none runs as).

With the admission policy of manifests/base, a Pod can write a Leasehold Lease only under its
own name; separate ServiceAccounts with these per-lock rights also keep other workloads away
from the locks (the API server has no clock, so the policy cannot stop a Pod that may write a
Lease from taking a live hold under its own name). Since create cannot be narrowed, a workload
can still create another lock's Lease before that lock's agents do; unless the namespace is
labelled leasehold.io/bind-all-leases=true (then the policy checks it), such a Lease blocks the
lock for at most an hour (every Lease create is capped, and agents wait no longer).`,
		Example: `  kubectl leasehold rbac -f deployment.yaml | kubectl apply -f -
  kubectl get deployment api -o yaml | kubectl leasehold rbac -f -
  kubectl leasehold rbac -n shop --name api --locks db-migration --leader scheduler`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.RBAC() },
	}
	rbac.Flags().StringVarP(&o.Filename, "filename", "f", "", "Manifest (YAML or JSON, several documents or a List) of the workloads; - reads standard input.")
	rbac.Flags().StringVar(&o.Name, "name", "", "Workload name, with --locks/--leader instead of -f.")
	rbac.Flags().StringSliceVar(&o.Locks, "locks", nil, "Mutex lock names, as in leasehold.io/locks.")
	rbac.Flags().StringSliceVar(&o.Leader, "leader", nil, "Leader lock names, as in leasehold.io/leader.")
	rbac.Flags().StringSliceVar(&o.Semaphores, "semaphores", nil, "Counting locks name=N, as in leasehold.io/semaphores (the Role grants the slot Leases name.1 .. name.N).")
	rbac.Flags().StringVar(&o.ServiceAccount, "service-account", "", "Bind this ServiceAccount instead of the template's own (or one named after the workload).")
	root.AddCommand(rbac)
	return root
}

func (o *Options) complete() error {
	if o.client != nil {
		return nil
	}
	cfg, err := o.ConfigFlags.ToRESTConfig()
	if err != nil {
		return fmt.Errorf("load kubeconfig: %w", err)
	}
	o.client, err = kubernetes.NewForConfig(cfg)
	return err
}

func (o *Options) namespace() (string, error) {
	if o.AllNamespaces {
		return metav1.NamespaceAll, nil
	}
	ns, _, err := o.ConfigFlags.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return "", fmt.Errorf("find the namespace from kubeconfig: %w", err)
	}
	return ns, nil
}

func (o *Options) listOptions() metav1.ListOptions {
	if o.AllLeases {
		return metav1.ListOptions{}
	}
	return metav1.ListOptions{LabelSelector: LabelManagedBy + "=" + ManagedByValue}
}

// List prints the locks, then follows changes when Watch is set.
func (o *Options) List(ctx context.Context) error {
	ns, err := o.namespace()
	if err != nil {
		return err
	}
	leases, err := o.client.CoordinationV1().Leases(ns).List(ctx, o.listOptions())
	if err != nil {
		return fmt.Errorf("list leases: %w", err)
	}
	items := leases.Items
	sort.Slice(items, func(i, j int) bool {
		if items[i].Namespace != items[j].Namespace {
			return items[i].Namespace < items[j].Namespace
		}
		return items[i].Name < items[j].Name
	})
	w := tabwriter.NewWriter(o.Out, 0, 4, 2, ' ', 0)
	o.printHeader(w)
	for i := range items {
		o.printRow(w, &items[i])
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if len(items) == 0 && !o.Watch {
		where := "namespace " + ns
		if o.AllNamespaces {
			where = "any namespace"
		}
		fmt.Fprintf(o.ErrOut, "No Leasehold locks in %s (a lock appears once an agent first writes its Lease; --all-leases shows other Leases too).\n", where)
	}
	if !o.Watch {
		return nil
	}
	opts := o.listOptions()
	opts.ResourceVersion = leases.ResourceVersion
	wi, err := o.client.CoordinationV1().Leases(ns).Watch(ctx, opts)
	if err != nil {
		return fmt.Errorf("watch leases: %w", err)
	}
	defer wi.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-wi.ResultChan():
			if !ok {
				return errors.New("the watch on leases ended (the API server closed it); run the command again")
			}
			lease, isLease := ev.Object.(*coordinationv1.Lease)
			if !isLease {
				continue
			}
			if ev.Type == watch.Deleted {
				fmt.Fprintf(o.Out, "deleted\t%s/%s\n", lease.Namespace, lease.Name)
				continue
			}
			o.printRow(w, lease)
			if err := w.Flush(); err != nil {
				return err
			}
		}
	}
}

func (o *Options) printHeader(w io.Writer) {
	if o.AllNamespaces {
		fmt.Fprint(w, "NAMESPACE\t")
	}
	fmt.Fprintln(w, "LOCK\tMODE\tHOLDER\tTOKEN\tSTATE\tAGE\tTIME LEFT\tWAITING")
}

func (o *Options) printRow(w io.Writer, l *coordinationv1.Lease) {
	r := Describe(l, o.Clock.Now())
	if o.AllNamespaces {
		fmt.Fprintf(w, "%s\t", l.Namespace)
	}
	fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", l.Name, r.Mode, r.Holder, r.Token, r.State, r.Age, r.TimeLeft, r.Waiting)
}

// Printable is s as the plugin prints a string that anyone who may write a Lease
// chose (an annotation, the holder identity): as it is when every rune is a visible
// character, else quoted with Go's escapes (strconv.Quote), so that a control
// character (an ESC sequence that drives the operator's terminal, a tab or newline
// that fakes a column or a row) or a Unicode format character (a right-to-left
// override) is shown, never obeyed. Spaces and quotes are quoted too, so that a value
// can neither split into two columns nor pass for a quoted one.
func Printable(s string) string {
	for _, r := range s {
		if r == utf8.RuneError || r == '"' || r == '\\' || unicode.IsSpace(r) || !unicode.IsGraphic(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

// Row is one lock as the listing shows it.
type Row struct {
	Mode, Holder, Age, TimeLeft string
	// State is held, jeopardy, lost, expired or free (the State* constants).
	State string
	Token int32
	// Waiting counts the Pods queued for a mutex, with the next one: "2 (next api-x2)".
	Waiting string
}

// Describe turns a Lease into the listing's columns at time now.
func Describe(l *coordinationv1.Lease, now time.Time) Row {
	r := Row{Mode: Printable(l.Annotations[AnnotationMode]), Holder: "<none>", State: StateFree, Age: "-", TimeLeft: "free", Waiting: "-"}
	if r.Mode == "" {
		r.Mode = "-"
	}
	if q := l.Annotations[contract.AnnotationQueue]; q != "" {
		ids := strings.Split(q, ",")
		r.Waiting = fmt.Sprintf("%d (next %s)", len(ids), Printable(holderPod(ids[0])))
	}
	rec := leaserecord.Of(l)
	r.Token = rec.Transitions
	if rec.Holder == "" {
		return r
	}
	r.Holder = Printable(holderPod(rec.Holder))
	if !rec.Acquired.IsZero() {
		r.Age = shortDuration(now.Sub(rec.Acquired))
	}
	r.State = StateHeld
	if end := rec.Expires(); !end.IsZero() {
		left := end.Sub(now)
		if left > 0 {
			r.TimeLeft = shortDuration(left)
		} else {
			r.TimeLeft = "expired"
			r.State = StateExpired
		}
	}
	if r.State == StateHeld {
		r.State = holdState(l, rec, now)
	}
	return r
}

// The STATE column.
const (
	// StateFree: no holder.
	StateFree = "free"
	// StateHeld: the holder renewed within its renew-deadline (as far as this machine's
	// clock and the holder's renewTime tell).
	StateHeld = "held"
	// StateJeopardy: an agent holder's renewal is overdue by more than its
	// renew-deadline, within its grace period: it does not say held now, and resumes
	// with the same token if a renewal lands (or the Pod is gone: then it expires).
	StateJeopardy = "jeopardy"
	// StateLost: an agent holder's renewal is overdue past renew-deadline and its grace
	// (0 with grace off): it has given the hold up; the Lease expires at TIME LEFT.
	StateLost = "lost"
	// StateExpired: lease-duration passed since the last renewal: anyone may take it.
	StateExpired = "expired"
)

// holdState tells held, jeopardy and lost apart for an agent's hold, from the
// renew-deadline and grace the agent records on the Lease. Other holders (client-go
// electors) are held until they expire.
func holdState(l *coordinationv1.Lease, rec leaserecord.Record, now time.Time) string {
	if _, ok := contract.PodOf(rec.Holder); !ok || rec.Renewed.IsZero() {
		return StateHeld
	}
	renew, err1 := time.ParseDuration(l.Annotations[contract.AnnotationRenewDeadline])
	grace, err2 := time.ParseDuration(l.Annotations[contract.AnnotationGrace])
	overdue := now.Sub(rec.Renewed)
	switch {
	case err1 != nil || renew <= 0 || overdue < renew:
		return StateHeld
	case err2 == nil && overdue < renew+grace:
		return StateJeopardy
	}
	return StateLost
}

// holderPod shows the Pod name of an agent identity "<pod>_<uid>"; other identities
// (client-go leader election, hostnames) are shown as they are.
func holderPod(identity string) string {
	if pod, ok := contract.PodOf(identity); ok {
		return pod
	}
	return identity
}

func shortDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < 10*time.Second:
		return d.Truncate(100 * time.Millisecond).String()
	case d < time.Hour:
		return d.Truncate(time.Second).String()
	default:
		return d.Truncate(time.Minute).String()
	}
}

// Release force-releases lock name in the current namespace after confirmation.
func (o *Options) Release(ctx context.Context, name string) error {
	if o.AllNamespaces {
		return errors.New("release works on one namespace: drop -A and pass -n NAMESPACE")
	}
	ns, err := o.namespace()
	if err != nil {
		return err
	}
	leases := o.client.CoordinationV1().Leases(ns)
	lease, err := leases.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("no lock %q in namespace %s (kubectl leasehold -n %s lists the locks there)", name, ns, ns)
	}
	if err != nil {
		return fmt.Errorf("get lease %s/%s: %w", ns, name, err)
	}
	r := Describe(lease, o.Clock.Now())
	if r.Holder == "<none>" {
		fmt.Fprintf(o.Out, "Lock %s/%s is not held; nothing to release.\n", ns, name)
		return nil
	}
	if !o.Yes {
		fmt.Fprintf(o.Out, "Lock %s/%s is held by %s (token %d, time left %s).\n"+
			"Force-releasing lets a waiting Pod take it at once. The holder's agent stops reporting it\n"+
			"as held when it sees the change, but the holder may still be inside its critical section:\n"+
			"only writes checked against the fencing token are safe. Type the lock name to confirm: ",
			ns, name, r.Holder, r.Token, r.TimeLeft)
		answer, _ := bufio.NewReader(o.In).ReadString('\n')
		if strings.TrimSpace(answer) != name {
			return errors.New("not confirmed: the lock was left as it was")
		}
	}
	// A conditional write of the record the agents write on release (client-go's
	// shape): empty holder, 1s duration, transitions kept so the next token is higher.
	lease.Spec = leaserecord.Of(lease).Released(o.Clock.Now()).Spec()
	if _, err := leases.Update(ctx, lease, metav1.UpdateOptions{}); err != nil {
		if apierrors.IsConflict(err) {
			return fmt.Errorf("lock %s/%s changed while releasing (renewed or handed over); look again with kubectl leasehold -n %s: %w", ns, name, ns, err)
		}
		if apierrors.IsForbidden(err) {
			return fmt.Errorf("release lease %s/%s: %w; to force-release, a person needs update on leases, and a "+
				"ServiceAccount also the verb %s on leases, which ClusterRole %s grants "+
				"(kubectl create rolebinding leasehold-operator -n %s --clusterrole=%s --serviceaccount=NAMESPACE:NAME)",
				ns, name, err, VerbForceRelease, OperatorClusterRole, ns, OperatorClusterRole)
		}
		return fmt.Errorf("release lease %s/%s: %w", ns, name, err)
	}
	fmt.Fprintf(o.Out, "Released lock %s/%s (was held by %s with fencing token %d; the next holder gets a higher one).\n", ns, name, r.Holder, r.Token)
	return nil
}

// RBAC prints the agents' least-privilege RBAC for the workloads of Filename, or for the
// workload that Name, Locks and Leader describe.
func (o *Options) RBAC() error {
	if o.AllNamespaces {
		return errors.New("rbac writes namespaced objects: drop -A and pass -n NAMESPACE")
	}
	ns, err := o.namespace()
	if err != nil {
		return err
	}
	var workloads []Workload
	switch {
	case o.Filename != "" && (o.Name != "" || len(o.Locks)+len(o.Leader)+len(o.Semaphores) > 0):
		return errors.New("either -f or --name with --locks/--leader, not both")
	case o.Filename != "":
		in := o.In
		if o.Filename != "-" {
			f, err := os.Open(o.Filename)
			if err != nil {
				return err
			}
			defer f.Close()
			in = f
		}
		if workloads, err = ReadWorkloads(in, ns); err != nil {
			return err
		}
		if len(workloads) == 0 {
			return fmt.Errorf("no Pod template in %s declares locks (annotations %s, %s or %s)", o.Filename, contract.AnnotationLocks, contract.AnnotationLeader, contract.AnnotationSemaphores)
		}
	default:
		w, err := WorkloadFromLocks(o.Name, ns, o.Locks, o.Leader, o.Semaphores)
		if err != nil {
			return err
		}
		workloads = []Workload{w}
	}
	for _, w := range workloads {
		if err := WriteRBAC(o.Out, w, NewAgentRBAC(w, o.ServiceAccount)); err != nil {
			return err
		}
	}
	return nil
}
