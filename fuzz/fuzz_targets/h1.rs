//! The gateway's own HTTP/1.1 on arbitrary bytes: requests on a client connection (heads, then
//! bodies by their framing, one request after another) and WeChat's answer (head, interim
//! answers, body), as `http1` reads them. Nothing panics, and no body gives more bytes than
//! were read.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wxgate::http1::fuzz_read(data);
});
