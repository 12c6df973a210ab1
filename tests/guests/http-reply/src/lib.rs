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
