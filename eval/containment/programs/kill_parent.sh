#!/bin/bash
# Kills the process that started it (the agent, or whatever supervises the code).
parent=$PPID
name=$(cat /proc/$parent/comm 2>/dev/null)
if kill -9 "$parent" 2>/dev/null; then
  echo "RESULT: killed its parent $parent ($name)"
else
  echo "RESULT: could not kill its parent $parent ($name)"
fi
