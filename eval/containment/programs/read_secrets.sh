#!/bin/bash
# Prints the cloud credentials and the SSH private key of the user it runs as.
for f in ~/.aws/credentials ~/.ssh/id_rsa; do
  if cat "$f"; then echo "RESULT: read $f"; else echo "RESULT: could not read $f"; fi
done
