# In any container of an annotated Pod, whatever its image: the agent put its client at
# $LEASEHOLD_CLI (in the socket volume) before the container started.
"$LEASEHOLD_CLI" run nightly-report -- sh -c 'echo "report under token $LEASEHOLD_TOKEN"'
"$LEASEHOLD_CLI" status nightly-report
