#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = portcullis::fuzzing::token_second_opinion(data);
});
