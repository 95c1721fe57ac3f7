#!/usr/bin/env node
// Usage: node npm-serve.js CONFIG PORT ACCESS_LOG
// verdaccio (from npm-kit/node_modules) on 127.0.0.1:PORT with one
// Apache-style line per request in ACCESS_LOG, written when the answer has
// been handed to the socket (so upstreams/hits can count requests like the
// other servers' logs). verdaccio's own log goes to stdout.
'use strict';
const fs = require('fs');
const path = require('path');
const { runServer } = require(path.join(__dirname, 'npm-kit', 'node_modules', 'verdaccio'));

const [config, port, accessLog] = process.argv.slice(2);
if (!config || !port || !accessLog) {
  console.error('usage: npm-serve.js CONFIG PORT ACCESS_LOG');
  process.exit(2);
}
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const pad = (n) => String(n).padStart(2, '0');
function stamp(d) {
  return `${pad(d.getUTCDate())}/${MONTHS[d.getUTCMonth()]}/${d.getUTCFullYear()}:` +
    `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} +0000`;
}

runServer(config).then((server) => {
  server.on('request', (req, res) => {
    let logged = false;
    const log = () => {
      if (logged) return;
      logged = true;
      const ua = (req.headers['user-agent'] || '-').replace(/"/g, "'");
      const bytes = res.getHeader('content-length') || '-';
      fs.appendFileSync(accessLog, `${req.socket.remoteAddress} - - [${stamp(new Date())}] ` +
        `"${req.method} ${req.url} HTTP/${req.httpVersion}" ${res.statusCode} ${bytes} "-" "${ua}"\n`);
    };
    res.on('finish', log);
    res.on('close', log);
  });
  server.keepAliveTimeout = 60000;
  server.listen(Number(port), '127.0.0.1', () => console.log(`listening on 127.0.0.1:${port}`));
}).catch((e) => {
  console.error(e);
  process.exit(1);
});
