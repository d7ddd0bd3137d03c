# The Job's container, with a hold that outlives one command: acquire with a ttl (a
# bound on the hold should the Pod hang), work, exit. No release is needed: when the
# container exits, the kubelet stops the agent, which releases every hold on SIGTERM.
TOKEN=$("$LEASEHOLD_CLI" acquire --wait=10m --ttl=30m -o token nightly-report) || exit 1
echo "report under token $TOKEN"
sleep 2
