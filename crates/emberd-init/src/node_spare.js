// emberd's spare Node.js: a `node` started ahead of the exec that will use
// it. It loads the common built-in modules, says "ready" on descriptor 3,
// then blocks until the agent writes one JSON line there:
// {"path", "cwd", "env"}. It then becomes that exec's process: the code file
// runs as the main module, with the exec's stdio (already its own), working
// directory and environment.
'use strict';
const fs = require('fs');

// What a typical exec requires, paid for before the exec arrives.
for (const name of ['assert', 'buffer', 'child_process', 'crypto', 'events', 'os', 'path',
  'readline', 'stream', 'string_decoder', 'url', 'util', 'zlib']) {
  require(name);
}

const CONTROL = 3;
fs.writeSync(CONTROL, 'ready\n');
const chunks = [];
const chunk = Buffer.alloc(64 * 1024);
for (;;) {
  const n = fs.readSync(CONTROL, chunk, 0, chunk.length, null);
  if (n === 0) break;
  chunks.push(Buffer.from(chunk.subarray(0, n)));
  if (chunk.subarray(0, n).includes(10)) break;
}
fs.closeSync(CONTROL);
const line = Buffer.concat(chunks).toString('utf8');
if (!line.includes('\n')) {
  // The agent went away before handing over an exec.
  process.exit(0);
}
const request = JSON.parse(line.slice(0, line.indexOf('\n')));
process.chdir(request.cwd);
for (const key of Object.keys(process.env)) delete process.env[key];
Object.assign(process.env, request.env);
process.argv = [process.argv[0], request.path];
require('module').runMain(request.path);
