#!/bin/bash
# Writes zeros into the workspace until the disk is full (at most 4 GiB).
echo "RESULT: free before: $(df -k --output=avail . | tail -1 | tr -d ' ') KiB"
dd if=/dev/zero of=./fill.bin bs=1M count=4096 2>&1 | tail -1
echo "RESULT: wrote $(du -m fill.bin | cut -f1) MiB; free after: $(df -k --output=avail . | tail -1 | tr -d ' ') KiB"
