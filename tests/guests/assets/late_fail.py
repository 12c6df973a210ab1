#!/usr/bin/env python3
"""Writes, on stdout, a WebAssembly module that fails to compile late: 500 valid functions, then
one whose body does not type-check (an i64 where an i32 is due), then `_start`. The e2e suite
runs it as a crash-looping WasmApp (docker.io/wasmkube/late-fail, built by scripts/images.sh):
the node compiles it once and remembers the failure for the pod's restarts."""
import sys

VALID = 500


def leb(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def sleb(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if (n == 0 and not b & 0x40) or (n == -1 and b & 0x40):
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def section(sid, body):
    return bytes([sid]) + leb(len(body)) + body


def vec(items):
    return leb(len(items)) + b"".join(items)


types = vec([
    b"\x60\x01\x7f\x01\x7f",  # 0: (i32) -> i32
    b"\x60\x00\x01\x7f",      # 1: () -> i32
    b"\x60\x00\x00",          # 2: () -> ()
])
funcs = vec([leb(0)] * VALID + [leb(1), leb(2)])
start = VALID + 1
exports = vec([leb(6) + b"_start" + b"\x00" + leb(start)])
bodies = []
for i in range(VALID):
    code = b"\x00" + b"\x20\x00" + b"\x41" + sleb(i) + b"\x6a" + b"\x0b"
    bodies.append(leb(len(code)) + code)
bad = b"\x00" + b"\x42\x00" + b"\x0b"  # i64.const 0 where the result is i32
bodies.append(leb(len(bad)) + bad)
nop = b"\x00\x0b"
bodies.append(leb(len(nop)) + nop)
module = (
    b"\x00asm\x01\x00\x00\x00"
    + section(1, types)
    + section(3, funcs)
    + section(7, exports)
    + section(10, vec(bodies))
)
sys.stdout.buffer.write(module)
