//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
)

const fencingNamespace = "leasehold-fencing" // examples/fencing/namespace.yaml

// TestFencingRefusesAFrozenHoldersLateWrite runs examples/fencing against PostgreSQL on
// the node (hack/postgres.sh): two writer replicas take turns on one lock and write units
// of work through the fence. The test catches the holder in the middle of a unit, after
// it checked that its hold is valid, and freezes its whole Pod (the writer and its agent,
// as a paused VM or a stalled node would) for longer than lease-duration. The Lease runs
// out, the other replica takes the lock with a higher token and writes; then the frozen
// Pod is thawed, and its writer, which still believes it holds, writes with the old
// token. PostgreSQL must refuse that write, and the accepted writes must form one history
// in which tokens never go down and no two holders' writes overlap in time.
func TestFencingRefusesAFrozenHoldersLateWrite(t *testing.T) {
	ctx := context.Background()
	podDSN, hostDSN := startPostgres(t)
	if out, err := exec.Command(filepath.Join(repoRoot, "hack", "images.sh"), "fencing-app").CombinedOutput(); err != nil {
		t.Fatalf("hack/images.sh fencing-app: %v\n%s", err, out)
	}
	// As docs/fencing.md says: the namespace, the database's URL in a Secret, the example.
	example := filepath.Join(repoRoot, "examples", "fencing")
	if _, err := kubectl("apply", "-f", filepath.Join(example, "namespace.yaml")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !t.Failed() {
			_ = cs.CoreV1().Namespaces().Delete(context.Background(), fencingNamespace, metav1.DeleteOptions{})
		}
	})
	if _, err := cs.CoreV1().Secrets(fencingNamespace).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "fencing-db"},
		StringData: map[string]string{"url": podDSN},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if out, err := kubectl("apply", "-k", example); err != nil {
		t.Fatal(err)
	} else {
		t.Log(out)
	}
	waitForDeployment(t, fencingNamespace, "fencing-writer")

	db, err := pgx.Connect(ctx, hostDSN)
	if err != nil {
		t.Fatalf("connect to the test database: %v", err)
	}
	t.Cleanup(func() { db.Close(context.Background()) })
	t.Cleanup(func() {
		if t.Failed() {
			dumpTables(t, db)
		}
	})

	// 0. The replicas take turns: wait for a handover, so that the history has one.
	if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		var writers int
		err := db.QueryRow(ctx, `SELECT count(DISTINCT writer) FROM writes`).Scan(&writers)
		return err == nil && writers >= 2, nil
	}); err != nil {
		t.Fatalf("the two replicas did not both write within 90s: %v", err)
	}

	// 1. A holder in the middle of a unit of work, frozen with its agent.
	var stale unitLine
	var pod string
	for attempt := 1; ; attempt++ {
		pod, stale = holderInUnit(t, 90*time.Second)
		thaw := freezePod(t, podUID(t, pod))
		// Frozen, the writer prints nothing more: its last line says where it stopped.
		if last, ok := lastEvent(logs(t, fencingNamespace, pod, "writer")); ok && last == stale {
			break
		}
		thaw() // it finished the unit before the freezer caught it: let it go on, try again
		if attempt == 3 {
			t.Fatalf("three times the writer finished its unit before its Pod froze")
		}
	}
	t.Logf("froze Pod %s in unit %d with token %d", pod, stale.seq, stale.token)

	// 2. Its Lease runs out; the other replica takes the lock and writes with a higher token.
	var successor fencedWrite
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		err := db.QueryRow(ctx, `SELECT id, token, writer, seq, started, ended FROM writes WHERE token > $1 ORDER BY id LIMIT 1`, stale.token).
			Scan(&successor.id, &successor.token, &successor.writer, &successor.seq, &successor.started, &successor.ended)
		return err == nil, nil
	}); err != nil {
		t.Fatalf("no write with a token above %d within 60s of freezing the holder %s: %v", stale.token, pod, err)
	}
	if successor.writer == pod {
		t.Fatalf("the frozen Pod %s wrote with token %d", pod, successor.token)
	}
	t.Logf("%s took over with token %d and wrote (id %d)", successor.writer, successor.token, successor.id)

	// 3. Thawed, the stale holder finishes its unit and writes with its old token.
	thawPod(t, podUID(t, pod))
	unitEnd := regexp.MustCompile(fmt.Sprintf(`msg=(refused|wrote) writer=\S+ lock=\S+ token=%d seq=%d`, stale.token, stale.seq))
	if m := waitForLog(t, fencingNamespace, pod, "writer", unitEnd, 30*time.Second); m[1] != "refused" {
		// Go on: the checks below show what the accepted stale write did to the history.
		t.Errorf("the frozen writer's unit %d with token %d ended %q after the thaw, want refused by PostgreSQL", stale.seq, stale.token, m[1])
	}

	// 4. The database refused it, recorded why, and holds one fenced history.
	var fenceToken int64
	if err := db.QueryRow(ctx, `SELECT fence_token FROM refusals WHERE writer = $1 AND token = $2 AND seq = $3`, pod, stale.token, stale.seq).Scan(&fenceToken); err != nil {
		t.Errorf("no refusal of %s's unit %d (token %d) in the refusals table: %v", pod, stale.seq, stale.token, err)
	} else if fenceToken < successor.token {
		t.Errorf("refused at fence token %d, want at least the successor's %d", fenceToken, successor.token)
	}
	var n int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM writes WHERE (writer = $1 AND seq = $2) OR (token = $3 AND id > $4)`,
		pod, stale.seq, stale.token, successor.id).Scan(&n); err != nil || n != 0 {
		t.Errorf("the stale unit (or another write of token %d after token %d's first) is in the writes table: %d rows, %v", stale.token, successor.token, n, err)
	}
	// 5. The stale writer keeps going: it takes the lock again later, with a new token.
	if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		var n int
		err := db.QueryRow(ctx, `SELECT count(*) FROM writes WHERE writer = $1 AND token > $2`, pod, successor.token).Scan(&n)
		return err == nil && n > 0, nil
	}); err != nil {
		t.Errorf("%s did not write again with a token above %d within 60s: %v", pod, successor.token, err)
	}
	history := fencedHistory(t, db)
	checkFencedHistory(t, history)
	if t.Failed() {
		return
	}
	t.Logf("stale write of token %d refused at fence token %d; %d accepted writes, tokens %d..%d, in fence order, none overlapping another holder's",
		stale.token, fenceToken, len(history), history[0].token, history[len(history)-1].token)
}

// startPostgres starts hack/postgres.sh's database for this test and stops it (with every
// process it started) when the test ends. It returns the URL for Pods and for this host.
func startPostgres(t *testing.T) (podDSN, hostDSN string) {
	t.Helper()
	script := filepath.Join(repoRoot, "hack", "postgres.sh")
	t.Cleanup(func() {
		if out, err := exec.Command(script, "stop").CombinedOutput(); err != nil {
			t.Errorf("hack/postgres.sh stop: %v\n%s", err, out)
		}
	})
	cmd := exec.Command(script, "start")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("hack/postgres.sh start: %v\n%s", err, stderr.String())
	}
	cmd = exec.Command(script, "dsn")
	cmd.Env = append(os.Environ(), "LOCAL=1")
	local, err := cmd.Output()
	if err != nil {
		t.Fatalf("hack/postgres.sh dsn: %v", err)
	}
	return strings.TrimSpace(string(out)), strings.TrimSpace(string(local))
}

// unitLine is a writer's log line about one unit of work or hold.
type unitLine struct {
	event      string // acquired, working, wrote, refused, stopped, released
	token, seq int64
	raw        string
}

var writerEvent = regexp.MustCompile(`msg=(acquired|working|wrote|refused|stopped|released) writer=\S+ lock=\S+ token=(\d+)(?: seq=(\d+))?`)

// lastEvent is the last event line of a writer's log.
func lastEvent(log string) (unitLine, bool) {
	all := writerEvent.FindAllStringSubmatch(log, -1)
	if len(all) == 0 {
		return unitLine{}, false
	}
	m := all[len(all)-1]
	tok, _ := strconv.ParseInt(m[2], 10, 64)
	seq, _ := strconv.ParseInt(m[3], 10, 64)
	return unitLine{event: m[1], token: tok, seq: seq, raw: m[0]}, true
}

// holderInUnit waits until a writer Pod's last line says it began a unit of work (it
// checked its hold and is now working under it) and returns that Pod and line.
func holderInUnit(t *testing.T, timeout time.Duration) (string, unitLine) {
	t.Helper()
	var pod string
	var line unitLine
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		for _, p := range podsOf(t, fencingNamespace, "fencing-writer") {
			raw, err := cs.CoreV1().Pods(fencingNamespace).GetLogs(p.Name, &corev1.PodLogOptions{Container: "writer", TailLines: ptr.To(int64(5))}).DoRaw(ctx)
			if err != nil {
				continue
			}
			if l, ok := lastEvent(string(raw)); ok && l.event == "working" {
				pod, line = p.Name, l
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		pods, _ := kubectl("-n", fencingNamespace, "get", "pods", "-o", "wide")
		t.Fatalf("no writer began a unit of work within %s: %v\n%s", timeout, err, pods)
	}
	return pod, line
}

func podUID(t *testing.T, name string) string {
	t.Helper()
	p, err := cs.CoreV1().Pods(fencingNamespace).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return string(p.UID)
}

// podFreezer is the freezer of a Pod's cgroup: every container of the Pod (the app, the
// agent, the sandbox) stops being scheduled while it is frozen, as in a paused VM.
type podFreezer struct {
	file           string // cgroup v2 cgroup.freeze, v1 freezer.state
	frozen, thawed string
}

// findPodFreezer finds the Pod's cgroup under the kubelet's kubepods tree: cgroup v2
// (cgroup.freeze) when /sys/fs/cgroup is the unified hierarchy, else the v1 freezer
// hierarchy; kubepods/<qos>/pod<uid> with the cgroupfs driver, or
// kubepods-<qos>-pod<uid_with_underscores>.slice with the systemd one.
func findPodFreezer(t *testing.T, uid string) podFreezer {
	t.Helper()
	f := podFreezer{file: "freezer.state", frozen: "FROZEN", thawed: "THAWED"}
	root := "/sys/fs/cgroup/freezer"
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		f = podFreezer{file: "cgroup.freeze", frozen: "1", thawed: "0"}
		root = "/sys/fs/cgroup"
	}
	names := map[string]bool{"pod" + uid: true, "pod" + strings.ReplaceAll(uid, "-", "_"): true}
	errFound := errors.New("found")
	var dir string
	for _, top := range []string{"kubepods", "kubepods.slice"} {
		err := filepath.WalkDir(filepath.Join(root, top), func(path string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			name := strings.TrimSuffix(d.Name(), ".slice")
			if i := strings.LastIndex(name, "-"); i >= 0 && strings.HasPrefix(name[i+1:], "pod") {
				name = name[i+1:]
			}
			if names[name] {
				dir = path
				return errFound
			}
			return nil
		})
		if errors.Is(err, errFound) {
			break
		}
	}
	if dir == "" {
		t.Fatalf("no cgroup of Pod %s under %s/kubepods: the kubelet's cgroup layout is not one this test knows", uid, root)
	}
	f.file = filepath.Join(dir, f.file)
	return f
}

// freezePod freezes the Pod and waits until the kernel says it is frozen. The thaw is
// registered with t.Cleanup, so no Pod stays frozen whatever happens; it is also
// returned (and thawPod does the same), and thawing twice is harmless.
func freezePod(t *testing.T, uid string) (thaw func()) {
	t.Helper()
	f := findPodFreezer(t, uid)
	thaw = func() {
		if err := os.WriteFile(f.file, []byte(f.thawed), 0); err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("thaw Pod %s (%s): %v", uid, f.file, err)
		}
	}
	t.Cleanup(thaw)
	if err := os.WriteFile(f.file, []byte(f.frozen), 0); err != nil {
		t.Fatalf("freeze Pod %s (%s): %v", uid, f.file, err)
	}
	state := f.file
	want := f.frozen
	if strings.HasSuffix(f.file, "cgroup.freeze") { // v2 reports the state in cgroup.events
		state, want = filepath.Join(filepath.Dir(f.file), "cgroup.events"), "frozen 1"
	}
	if err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		raw, err := os.ReadFile(state)
		return err == nil && strings.Contains(string(raw), want), nil
	}); err != nil {
		t.Fatalf("Pod %s did not freeze within 10s (%s)", uid, state)
	}
	return thaw
}

func thawPod(t *testing.T, uid string) {
	t.Helper()
	f := findPodFreezer(t, uid)
	if err := os.WriteFile(f.file, []byte(f.thawed), 0); err != nil {
		t.Fatalf("thaw Pod %s (%s): %v", uid, f.file, err)
	}
}

// fencedWrite is one row of examples/fencing's writes table.
type fencedWrite struct {
	id, token, seq int64
	writer         string
	started, ended time.Time
}

func fencedHistory(t *testing.T, db *pgx.Conn) []fencedWrite {
	t.Helper()
	rows, err := db.Query(context.Background(), `SELECT id, token, writer, seq, started, ended FROM writes ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var out []fencedWrite
	for rows.Next() {
		var w fencedWrite
		if err := rows.Scan(&w.id, &w.token, &w.writer, &w.seq, &w.started, &w.ended); err != nil {
			t.Fatal(err)
		}
		out = append(out, w)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatal("the writes table is empty")
	}
	return out
}

// checkFencedHistory checks the accepted writes in the order they passed the fence (id):
// tokens never go down, and every write under a higher token started (its writer began
// the unit) after every write under lower tokens had ended (was written). Both hold for
// replicas that hand the lock over; a stale holder's write that got through would break
// both, having started before its Pod froze and ended after the successor's first write.
func checkFencedHistory(t *testing.T, ws []fencedWrite) {
	t.Helper()
	var lastEnded time.Time
	for i, w := range ws {
		if i > 0 {
			prev := ws[i-1]
			if w.token < prev.token {
				t.Errorf("token went down: write %d (%s, token %d) passed the fence after write %d (%s, token %d)",
					w.id, w.writer, w.token, prev.id, prev.writer, prev.token)
			}
			if w.token != prev.token && w.started.Before(lastEnded) {
				t.Errorf("writes of two holders overlap: write %d (%s, token %d) started %s, before a write of a lower token ended %s",
					w.id, w.writer, w.token, w.started.Format(time.StampMicro), lastEnded.Format(time.StampMicro))
			}
		}
		if w.ended.After(lastEnded) {
			lastEnded = w.ended
		}
	}
}

func dumpTables(t *testing.T, db *pgx.Conn) {
	t.Helper()
	for _, q := range []string{
		`SELECT id, token, writer, seq, started, ended FROM writes ORDER BY id`,
		`SELECT id, token, writer, seq, started, fence_token, refused FROM refusals ORDER BY id`,
	} {
		rows, err := db.Query(context.Background(), q)
		if err != nil {
			t.Logf("%s: %v", q, err)
			continue
		}
		var b strings.Builder
		for rows.Next() {
			vals, _ := rows.Values()
			fmt.Fprintln(&b, vals...)
		}
		rows.Close()
		t.Logf("%s:\n%s", q, b.String())
	}
}
