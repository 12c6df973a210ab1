//! Wasm modules generated to a size, for tests and benchmarks that need big code.

/// A valid preview1 command module of at least `size` bytes: `size / 10_000` functions of about
/// 10 KB of arithmetic each, exported `_start` being the first. With
/// `spin`, `_start` loops forever instead of returning (a long-running instance).
pub fn big_module(size: usize, spin: bool) -> Vec<u8> {
    let funcs = (size / 10_000).max(1);
    // One i32 local, then `local.get 0; i32.const 1; i32.add; local.set 0` repeated: a long
    // dependency chain the compiler must really lower and allocate registers for.
    let mut filler = vec![1u8, 1, 0x7f];
    for _ in 0..1_440 {
        filler.extend_from_slice(&[0x20, 0x00, 0x41, 0x01, 0x6a, 0x21, 0x00]);
    }
    filler.push(0x0b);
    // loop (br 0) end, end
    let spinner = [0u8, 0x03, 0x40, 0x0c, 0x00, 0x0b, 0x0b];
    let mut out = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[1, 0x60, 0, 0], &mut out);
    let mut fsec = Vec::new();
    leb(funcs, &mut fsec);
    fsec.extend(std::iter::repeat_n(0u8, funcs));
    section(3, &fsec, &mut out);
    section(
        7,
        &[1, 6, b'_', b's', b't', b'a', b'r', b't', 0, 0],
        &mut out,
    );
    let mut code = Vec::new();
    leb(funcs, &mut code);
    for i in 0..funcs {
        let body: &[u8] = if i == 0 && spin { &spinner } else { &filler };
        leb(body.len(), &mut code);
        code.extend_from_slice(body);
    }
    section(10, &code, &mut out);
    out
}

fn leb(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push(id);
    leb(body.len(), out);
    out.extend_from_slice(body);
}
