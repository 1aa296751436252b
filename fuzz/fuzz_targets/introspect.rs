//! Introspect, decoded and handled by the broker: the input is the raw
//! IntrospectRequest body, sent by an authenticated workload.
#![no_main]

use credbroker_fuzz::{Kind, call, harness};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let h = harness();
    call(
        h,
        &h.workload,
        "/credbroker.v1.Workload/Introspect",
        Kind::Unary,
        data.to_vec(),
    );
});
