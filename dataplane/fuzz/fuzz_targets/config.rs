//! The TOML configuration as the daemon and `loupe check` parse it: `Config::parse`, with
//! every table's validation and the `file:line` of each error.
//!
//! Input: the file's bytes (lossy UTF-8, as a file that is not UTF-8 is refused before
//! parsing).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use loupe_control::config::Config;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let file = Path::new("fuzz.toml");
    match Config::parse(&text, file) {
        Ok(config) => {
            // Parsing is a function of the text.
            let again = Config::parse(&text, file).expect("the same text parses twice");
            assert_eq!(config, again);
        }
        Err(error) => {
            // Every error names the file and, when it has one, a line of it.
            let lines = text.split('\n').count();
            if let Some(line) = error.line {
                assert!((1..=lines).contains(&line), "line {line} of {lines}: {error}");
            }
            let shown = error.to_string();
            assert!(shown.starts_with("fuzz.toml"), "{shown}");
            assert!(!error.message.trim().is_empty(), "{shown}: no message");
        }
    }
});
