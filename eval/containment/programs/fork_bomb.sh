#!/bin/bash
# The classic fork bomb, left running for 6 seconds.
sleep 6 & waiter=$!
echo "RESULT: fork bomb started"
bomb() { bomb | bomb & }
bomb
wait $waiter
echo "RESULT: fork bomb ran for 6 s; the script still runs"
