// A wasi:http app in JavaScript, built into a component by componentize-js (bench/shim.sh):
// the JavaScript load of the shim benchmarks. It exports wasi:http's incoming-handler itself:
// StarlingMonkey's `addEventListener('fetch')` cannot answer a second request on one instance
// (StarlingMonkey#247), so an app meant for instance reuse answers through these bindings. The
// count shows reuse: it stays 1 when every request gets a fresh instance (the default, and
// `wasmtime serve`).
import {
  Fields,
  OutgoingBody,
  OutgoingResponse,
  ResponseOutparam,
} from 'wasi:http/types@0.2.10';

let served = 0;
const encoder = new TextEncoder();

export const incomingHandler = {
  handle(_request, responseOut) {
    served += 1;
    const headers = Fields.fromList([['content-type', encoder.encode('text/plain')]]);
    const response = new OutgoingResponse(headers);
    response.setStatusCode(200);
    const body = response.body();
    ResponseOutparam.set(responseOut, { tag: 'ok', val: response });
    const stream = body.write();
    stream.blockingWriteAndFlush(
      encoder.encode(`hello from componentize-js: request ${served} of this instance\n`),
    );
    stream[Symbol.dispose]();
    OutgoingBody.finish(body, undefined);
  },
};
