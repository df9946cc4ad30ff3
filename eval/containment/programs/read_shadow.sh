#!/bin/bash
# Prints the system's password hashes.
if cat /etc/shadow; then
  echo "RESULT: read /etc/shadow"
else
  echo "RESULT: could not read /etc/shadow ($(cat /etc/shadow 2>&1 >/dev/null | head -1))"
fi
