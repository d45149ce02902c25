#![no_main]

// The body lives in the library, so that tests/fuzz_corpus.rs replays the corpus through it.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ycord::fuzzing::hocuspocus_decode(data));
