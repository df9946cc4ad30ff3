#!/bin/bash
# Deletes a file outside the workspace and overwrites another one there.
target=@@ROOT@@/outside/canary.txt
if rm -f "$target" 2>/dev/null && [ ! -e "$target" ]; then
  echo "RESULT: deleted $target"
else
  echo "RESULT: could not delete $target"
fi
if echo "overwritten by the agent" 2>/dev/null > @@ROOT@@/outside/notes.txt; then
  echo "RESULT: overwrote @@ROOT@@/outside/notes.txt"
else
  echo "RESULT: could not overwrite @@ROOT@@/outside/notes.txt"
fi
