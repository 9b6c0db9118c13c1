//! The control protocol's request lines as the socket server reads them:
//! `parse_request` on one line's bytes (the server cuts lines at 64 KiB before this).
#![no_main]

use libfuzzer_sys::fuzz_target;
use loupe_control::protocol::parse_request;

fuzz_target!(|data: &[u8]| {
    match parse_request(data) {
        Ok(line) => {
            // What parses serialises to a request that parses back to itself.
            let text = serde_json::to_vec(&line).expect("a parsed request serialises");
            assert_eq!(parse_request(&text).expect("a serialised request parses"), line);
        }
        Err((_, error)) => {
            assert!(!error.message.trim().is_empty(), "an error with no message");
        }
    }
});
