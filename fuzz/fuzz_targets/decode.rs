//! The FUSE request decoder on arbitrary bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| devlife::fuzzing::decode(data));
