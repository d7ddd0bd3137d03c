// Command leasehold is the small client of the Leasehold agent:
//
//	leasehold run [--wait=DUR] [--on-jeopardy=freeze|end] LOCK -- COMMAND [ARG...]
//	                                                       run COMMAND under LOCK, like flock
//	leasehold acquire [--wait=DUR] [--ttl=DUR] [-o token] LOCK  take LOCK for this Pod
//	leasehold renew --token=N [--ttl=DUR] LOCK             restart the ttl of the hold with token N
//	leasehold release --token=N LOCK                       end the hold with token N
//	leasehold status [--held] [LOCK]                       print the state as JSON
//	                                                       (--held: exit 1 unless this Pod holds LOCK)
//	leasehold version                                      print the version
//
// It talks to $LEASEHOLD_URL, else $LEASEHOLD_SOCKET, else /run/leasehold/agent.sock.
//
// Exit status: run passes COMMAND's status through; otherwise 0 on success, 1 not
// acquired / not held, 2 wait timed out, 64 usage or a request the agent refused
// (400, 404: e.g. a lock not declared for the Pod), 69 agent or API server unavailable.
// release and renew name the hold by the fencing token that acquire printed (-o token
// prints only the token), so a late call can never end or extend a later hold: a stale
// token exits 1 and changes nothing.
//
// run uses a hold tied to its connection: when leasehold (or its COMMAND) dies, the
// lock is released at once. If the agent ends the hold (lost, shutdown), COMMAND is
// sent SIGTERM. While the hold is in jeopardy (the API server unavailable past
// renew-deadline), COMMAND's process group is stopped (SIGSTOP) and continued
// (SIGCONT) when the hold is safe again; --on-jeopardy=end ends COMMAND instead, for
// programs that must not be frozen. With a leader lock, run waits until this Pod leads
// and runs COMMAND while it does.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/leasehold/leasehold/internal/version"
	"github.com/leasehold/leasehold/sidecar/client"
)

const (
	exitNotAcquired = 1
	exitTimeout     = 2
	exitUsage       = 64
	exitUnavailable = 69
)

func usage() {
	fmt.Fprintln(os.Stderr, `usage:
  leasehold run [--wait=DUR] [--on-jeopardy=freeze|end] LOCK -- COMMAND [ARG...]
  leasehold acquire [--wait=DUR] [--ttl=DUR] [-o token] LOCK
  leasehold renew --token=N [--ttl=DUR] LOCK
  leasehold release --token=N LOCK
  leasehold status [--held] [LOCK]
  leasehold version
flags (before the subcommand or after it): --socket PATH, --url http://127.0.0.1:PORT`)
	os.Exit(exitUsage)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	sub := os.Args[1]
	if sub == "version" || sub == "--version" {
		fmt.Println(version.String("leasehold"))
		return
	}
	fs := flag.NewFlagSet("leasehold "+sub, flag.ExitOnError)
	socket := fs.String("socket", "", "agent socket (default $LEASEHOLD_SOCKET or "+client.DefaultSocket+")")
	rawURL := fs.String("url", "", "agent URL (default $LEASEHOLD_URL)")
	wait := fs.Duration("wait", 0, "how long to wait for the lock; 0 = try once (run waits forever by default)")
	ttl := fs.Duration("ttl", 0, "acquire: the hold ends unless renewed or released within ttl")
	heldOnly := fs.Bool("held", false, "status: exit 1 unless this Pod holds LOCK (am I the leader?)")
	token := fs.Int64("token", 0, "release, renew: the fencing token of the hold (printed by acquire)")
	output := fs.String("o", "json", "acquire: json (the state) or token (the fencing token only, for $(...))")
	onJeopardy := fs.String("on-jeopardy", jeopardyFreeze, "run: what to do with COMMAND while the hold is in jeopardy: "+
		"freeze (SIGSTOP its process group, SIGCONT when safe again) or end (SIGTERM, as when the hold is lost)")
	_ = fs.Parse(os.Args[2:])
	if *onJeopardy != jeopardyFreeze && *onJeopardy != jeopardyEnd {
		fmt.Fprintf(os.Stderr, "leasehold %s: --on-jeopardy=%q: use freeze (the default) or end\n", sub, *onJeopardy)
		os.Exit(exitUsage)
	}
	c := client.FromEnv()
	if *socket != "" || *rawURL != "" {
		c = client.New(*socket, *rawURL)
	}
	args := fs.Args()
	ctx := context.Background()
	switch sub {
	case "run":
		// leasehold run LOCK -- COMMAND...: flag parsing stops at LOCK; "--" is optional.
		if len(args) < 2 {
			usage()
		}
		name, cmd := args[0], args[1:]
		if cmd[0] == "--" {
			cmd = cmd[1:]
		}
		if len(cmd) == 0 {
			usage()
		}
		w := *wait
		if w == 0 && !flagSet(fs, "wait") {
			w = 24 * time.Hour * 365
		}
		os.Exit(run(ctx, c, name, w, *onJeopardy == jeopardyEnd, cmd))
	case "acquire":
		if len(args) != 1 {
			usage()
		}
		if *output != "json" && *output != "token" {
			fmt.Fprintf(os.Stderr, "leasehold acquire: -o %q: use -o json (the default) or -o token\n", *output)
			os.Exit(exitUsage)
		}
		s, err := c.Acquire(ctx, args[0], *wait, *ttl)
		if err == nil && *output == "token" {
			fmt.Println(s.Token)
			os.Exit(0)
		}
		os.Exit(report(s, err))
	case "release", "renew":
		if len(args) != 1 {
			usage()
		}
		if *token <= 0 {
			fmt.Fprintf(os.Stderr, "leasehold %s: --token is required: pass the token that acquire printed "+
				"(TOKEN=$(leasehold acquire -o token %s); leasehold %s --token=\"$TOKEN\" %s)\n", sub, args[0], sub, args[0])
			os.Exit(exitUsage)
		}
		var s any
		var err error
		if sub == "release" {
			s, err = c.Release(ctx, args[0], *token)
		} else {
			s, err = c.Renew(ctx, args[0], *token, *ttl)
		}
		os.Exit(report(s, err))
	case "status":
		if len(args) == 0 && !*heldOnly {
			ls, err := c.States(ctx)
			os.Exit(report(map[string]any{"locks": ls}, err))
		}
		if len(args) != 1 {
			usage()
		}
		s, err := c.State(ctx, args[0])
		code := report(s, err)
		if code == 0 && *heldOnly && !s.Held {
			code = exitNotAcquired
		}
		os.Exit(code)
	default:
		usage()
	}
}

func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func report(v any, err error) int {
	if err != nil {
		fmt.Fprintln(os.Stderr, "leasehold:", err)
		return exitCode(err)
	}
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
	return 0
}

func exitCode(err error) int {
	var e *client.Error
	if !errors.As(err, &e) {
		return exitUnavailable
	}
	switch e.Status {
	case http.StatusConflict:
		return exitNotAcquired
	case http.StatusRequestTimeout:
		return exitTimeout
	case http.StatusServiceUnavailable:
		return exitUnavailable
	default:
		return exitUsage
	}
}

// What run does while the hold is in jeopardy.
const (
	jeopardyFreeze = "freeze"
	jeopardyEnd    = "end"
)

func run(ctx context.Context, c *client.Client, name string, wait time.Duration, endOnJeopardy bool, argv []string) int {
	h, err := c.HoldConnection(ctx, name, wait, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "leasehold:", err)
		return exitCode(err)
	}
	defer h.Close()
	// When the command is done, release by token before closing the connection: the
	// close alone also ends the hold, but the agent sees it a moment later, and a
	// script's next line must find the lock released.
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _ = c.Release(rctx, name, h.State.Token)
	}()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "LEASEHOLD_LOCK="+name, "LEASEHOLD_TOKEN="+strconv.FormatInt(h.State.Token, 10))
	if h.State.Slot != "" {
		// A semaphore's token grows per slot: a fenced store keys it by the slot.
		cmd.Env = append(cmd.Env, "LEASEHOLD_SLOT="+h.State.Slot)
	}
	// COMMAND gets a process group of its own, so that a jeopardy freezes everything it
	// started; not when it reads a terminal, which only the foreground group may.
	group := !term.IsTerminal(int(os.Stdin.Fd()))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: group}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "leasehold: start command:", err)
		return 127
	}
	freeze := func(sig syscall.Signal) {
		if group {
			_ = syscall.Kill(-cmd.Process.Pid, sig)
			return
		}
		_ = cmd.Process.Signal(sig)
	}
	frozen := false
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	if h.Jeopardy() {
		h.Changed <- struct{}{} // in jeopardy already: act on it below
	}
	for {
		select {
		case s := <-sigs:
			_ = cmd.Process.Signal(s)
		case <-h.Changed:
			switch j := h.Jeopardy(); {
			case j && endOnJeopardy:
				fmt.Fprintf(os.Stderr, "leasehold: lock %s is in jeopardy (the API server is unavailable): ending the command (--on-jeopardy=end)\n", name)
				_ = cmd.Process.Signal(syscall.SIGTERM)
				h.Changed = nil
			case j && !frozen:
				fmt.Fprintf(os.Stderr, "leasehold: lock %s is in jeopardy (the API server is unavailable): freezing the command until it is safe again\n", name)
				freeze(syscall.SIGSTOP)
				frozen = true
			case !j && frozen:
				fmt.Fprintf(os.Stderr, "leasehold: lock %s is safe again (same token %d): continuing the command\n", name, h.State.Token)
				freeze(syscall.SIGCONT)
				frozen = false
			}
		case <-h.Ended:
			fmt.Fprintf(os.Stderr, "leasehold: lock %s ended (%s): stopping the command\n", name, h.Reason)
			_ = cmd.Process.Signal(syscall.SIGTERM)
			if frozen {
				freeze(syscall.SIGCONT) // a stopped process acts on SIGTERM only once continued
				frozen = false
			}
			h.Ended = nil
		case err := <-done:
			var ee *exec.ExitError
			switch {
			case err == nil:
				return 0
			case errors.As(err, &ee):
				if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
					return 128 + int(ws.Signal())
				}
				return ee.ExitCode()
			default:
				return 1
			}
		}
	}
}
