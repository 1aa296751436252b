//! The SDK's `JwtVerifier` on arbitrary tokens, with the keys of a real
//! broker (parsing, algorithm, key lookup, signature, claims, binding).
//! An input starting with `.` is appended to the header and payload of a
//! real token, so mutated signatures and suffixes are reached too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let h = credbroker_fuzz::harness();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let token = match text.strip_prefix('.') {
        Some(rest) => {
            let signed: Vec<&str> = h.jwt.splitn(3, '.').take(2).collect();
            format!("{}.{rest}", signed.join("."))
        }
        None => text.to_owned(),
    };
    h.rt.block_on(async {
        let _ = h.verifier.verify(&token).await;
        let _ = h.verifier.verify_presented(&token, data).await;
    });
});
