# The Job's container: the report runs under the lock; the hold ends with the command.
exec "$LEASEHOLD_CLI" run --wait=10m nightly-report -- sh -c 'echo "report under token $LEASEHOLD_TOKEN"; sleep 2'
