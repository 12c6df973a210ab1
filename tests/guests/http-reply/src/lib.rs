//! The one way the wasi:http test guests answer: status 200, `content-type: text/plain`, and
//! `text` as the whole body.

use std::io::Write as _;

use wasi::http::types::{Fields, OutgoingBody, OutgoingResponse, ResponseOutparam};

/// Answers the request behind `response_out` with status 200 and `text`.
pub fn text(response_out: ResponseOutparam, text: &str) {
    let headers = Fields::from_list(&[("content-type".to_string(), b"text/plain".to_vec())])
        .expect("valid header");
    let response = OutgoingResponse::new(headers);
    response.set_status_code(200).expect("valid status");
    let body = response.body().expect("response body");
    ResponseOutparam::set(response_out, Ok(response));
    let mut stream = body.write().expect("body stream");
    stream.write_all(text.as_bytes()).expect("write body");
    stream.flush().expect("flush body");
    drop(stream);
    OutgoingBody::finish(body, None).expect("finish body");
}

/// This instance's id (drawn on its first request) and the requests it has served, this one
/// included: shows whether the host reuses instances (the count stays 1 when it does not).
pub fn count_request() -> (u64, u64) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static ID: AtomicU64 = AtomicU64::new(0);
    static SERVED: AtomicU64 = AtomicU64::new(0);
    if ID.load(Ordering::Relaxed) == 0 {
        ID.store(
            wasi::random::random::get_random_u64() | 1,
            Ordering::Relaxed,
        );
    }
    let n = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
    (ID.load(Ordering::Relaxed), n)
}
