//! Fuzzes the configuration file: `Config::parse` (TOML, `deny_unknown_fields`, then `validate`)
//! and `Config::parse_unchecked` + `problems` (what `facestream check` does) on arbitrary text.
//!
//! Invariants: no panic; parse is Ok exactly when the unchecked parse is Ok and reports no
//! problem; every error message starts with the file's name and stands for at least one problem,
//! each with a message (and, for value problems, the `section.key` it is about).
#![no_main]

use std::path::Path;

use facestream::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

// Not a file that exists, so the base folder is "." and nothing is read from disk.
const FILE: &str = "<fuzz input>.toml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let file = Path::new(FILE);
    let checked = Config::parse(text, file);
    let unchecked = Config::parse_unchecked(text, file);
    match (&checked, &unchecked) {
        (Ok(cfg), Ok(_)) => assert!(cfg.problems().is_empty(), "parse accepted a config with problems: {:?}", cfg.problems()),
        (Err(e), Ok(cfg)) => {
            let problems = cfg.problems();
            assert!(!problems.is_empty(), "parse refused ({e}) a config without problems");
            assert!(matches!(e, ConfigError::Problems { .. }), "a config that parses unchecked was refused with {e:?}");
            for p in &problems {
                assert!(p.key.contains('.') && !p.key.starts_with('.') && !p.key.ends_with('.'), "problem key `{}` is not section.key", p.key);
            }
        }
        (Err(_), Err(_)) => {}
        (Ok(_), Err(e)) => panic!("parse accepted what parse_unchecked refused: {e}"),
    }
    for e in [checked.err(), unchecked.err()].into_iter().flatten() {
        let msg = e.to_string();
        assert!(msg.starts_with(FILE), "config error does not start with the file name: {msg:?}");
        let problems = e.problems();
        assert!(!problems.is_empty(), "config error with no problem: {msg:?}");
        for p in &problems {
            assert!(!p.message.trim().is_empty(), "problem `{}` without a message", p.key);
        }
    }
});
