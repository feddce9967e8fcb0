// grpc-js health client for tests/interop/test_grpcjs.py.
//
// Usage: node health_client.js <target> [--gzip] check <service>
//        node health_client.js <target> [--gzip] list
//        node health_client.js <target> [--gzip] watch <service> <n>
//
// check prints the status name, or "ERROR <code> <details>"; list prints the statuses as JSON
// ({"service": "STATUS", ...}); watch prints the first n statuses one per line, then cancels.
// Every call carries a deadline. Exit status 0 unless the command line is bad or the call failed
// in a way the output does not report.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const DEADLINE_MS = 10000;
const PROTO_ROOT = path.resolve(__dirname, '..', '..', '..', 'proto');

function usage() {
  process.stderr.write('usage: health_client.js <target> [--gzip] ' +
                       '(check <service> | list | watch <service> <n>)\n');
  process.exit(2);
}

function deadline() {
  return new Date(Date.now() + DEADLINE_MS);
}

function printError(err) {
  process.stdout.write(`ERROR ${grpc.status[err.code]} ${err.details}\n`);
}

function main() {
  const args = process.argv.slice(2);
  if (args.length < 2) usage();
  const target = args.shift();
  const options = {};
  if (args[0] === '--gzip') {
    args.shift();
    options['grpc.default_compression_algorithm'] = 2;  // gzip
  }
  const command = args.shift();

  const definition = protoLoader.loadSync('grpc/health/v1/health.proto', {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    enums: String,
    defaults: true,
  });
  const Health = grpc.loadPackageDefinition(definition).grpc.health.v1.Health;
  const client = new Health(target, grpc.credentials.createInsecure(), options);

  if (command === 'check' && args.length === 1) {
    client.Check({service: args[0]}, {deadline: deadline()}, (err, resp) => {
      if (err) printError(err);
      else process.stdout.write(`${resp.status}\n`);
      client.close();
    });
  } else if (command === 'list' && args.length === 0) {
    client.List({}, {deadline: deadline()}, (err, resp) => {
      if (err) {
        printError(err);
      } else {
        const out = {};
        for (const [name, value] of Object.entries(resp.statuses)) out[name] = value.status;
        process.stdout.write(`${JSON.stringify(out)}\n`);
      }
      client.close();
    });
  } else if (command === 'watch' && args.length === 2) {
    const want = Number.parseInt(args[1], 10);
    if (!(want > 0)) usage();
    let seen = 0;
    let cancelled = false;
    const call = client.Watch({service: args[0]}, {deadline: deadline()});
    call.on('data', (resp) => {
      if (cancelled) return;
      seen += 1;
      process.stdout.write(`${resp.status}\n`);
      if (seen >= want) {
        cancelled = true;
        call.cancel();
      }
    });
    call.on('error', (err) => {
      if (!(cancelled && err.code === grpc.status.CANCELLED)) printError(err);
    });
    call.on('close', () => client.close());
  } else {
    usage();
  }
}

main();
