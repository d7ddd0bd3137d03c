"""Call the Leasehold agent from Python, standard library only (http.client over the
Unix socket named in $LEASEHOLD_SOCKET). Copy what you need into your app.

    python3 leasehold.py LOCK     # acquire with a ttl, release; then hold LOCK for as
                                  # long as one line on stdin takes to arrive
"""
import http.client
import json
import os
import socket
import sys
import urllib.parse


class AgentConnection(http.client.HTTPConnection):
    """An HTTP connection to the agent's Unix socket."""

    def __init__(self, path=None, timeout=None):
        super().__init__("leasehold", timeout=timeout)
        self.path = path or os.environ.get("LEASEHOLD_SOCKET", "/run/leasehold/agent.sock")

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if self.timeout is not None:
            self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class LeaseholdError(Exception):
    """A non-2xx answer: status 404 not declared, 409 not acquired / stale token,
    408 wait timed out, 400 bad input, 503 API server unreachable or shutting down."""

    def __init__(self, status, body):
        self.status, self.body = status, body
        super().__init__("%d: %s" % (status, body.get("error", body)))


def call(method, path, **query):
    """One request on a new connection; returns the JSON answer or raises LeaseholdError."""
    conn = AgentConnection()
    try:
        if query:
            path += "?" + urllib.parse.urlencode(query)
        conn.request(method, path)
        resp = conn.getresponse()
        body = json.loads(resp.read() or b"{}")
        if resp.status // 100 != 2:
            raise LeaseholdError(resp.status, body)
        return body
    finally:
        conn.close()


def acquire(lock, wait="30s", ttl="5m"):
    """Take lock, waiting up to wait; the hold ends after ttl unless renewed or released.
    Returns the fencing token."""
    return call("POST", "/v1/locks/%s/acquire" % lock, wait=wait, ttl=ttl)["token"]


def release(lock, token):
    call("POST", "/v1/locks/%s/release" % lock, token=token)


def is_held(lock):
    """True when this Pod holds lock (for a leader lock: this Pod is the leader)."""
    return call("GET", "/v1/locks/%s" % lock)["held"]


class hold:
    """with hold("db-migration") as token: ... holds the lock for the block, tied to
    the connection: if the process dies, the agent releases the lock at once."""

    def __init__(self, lock, wait="30s"):
        self.lock, self.wait = lock, wait

    def __enter__(self):
        self.conn = AgentConnection()
        q = urllib.parse.urlencode({"wait": self.wait, "hold": "connection"})
        self.conn.request("POST", "/v1/locks/%s/acquire?%s" % (self.lock, q))
        resp = self.conn.getresponse()
        if resp.status != 200:
            body = json.loads(resp.read() or b"{}")
            self.conn.close()
            raise LeaseholdError(resp.status, body)
        self.resp = resp
        return json.loads(resp.readline())["token"]  # the first line is the state

    def __exit__(self, *exc):
        self.conn.close()  # ends the hold at once
        return False


if __name__ == "__main__":
    lock = sys.argv[1]
    token = acquire(lock, wait="10s", ttl="1m")
    print("acquired %s token=%d held=%s" % (lock, token, is_held(lock)), flush=True)
    release(lock, token)
    try:
        release(lock, token)
    except LeaseholdError as e:
        print("second release: %d %s" % (e.status, e.body.get("reason")), flush=True)
    with hold(lock) as token:
        print("holding %s token=%d" % (lock, token), flush=True)
        sys.stdin.readline()
    print("closed the hold on %s" % lock, flush=True)
