//! Every Workload RPC, decoded and handled by the broker. The first byte
//! picks the method and the caller (anonymous or an attested workload);
//! the rest is the raw request body.
#![no_main]

use credbroker_fuzz::{Kind, call, harness, pick};
use libfuzzer_sys::fuzz_target;

const METHODS: &[(&str, Kind)] = &[
    ("/credbroker.v1.Workload/Attest", Kind::Unary),
    ("/credbroker.v1.Workload/FetchJwt", Kind::Unary),
    ("/credbroker.v1.Workload/RenewX509", Kind::Unary),
    ("/credbroker.v1.Workload/GetJwks", Kind::Unary),
    ("/credbroker.v1.Workload/Introspect", Kind::Unary),
    (
        "/credbroker.v1.Workload/WatchRevocations",
        Kind::ServerStream,
    ),
    (
        "/credbroker.v1.Workload/WatchNodeEntries",
        Kind::ServerStream,
    ),
    ("/credbroker.v1.Workload/MintWorkloadSvid", Kind::Unary),
    ("/credbroker.v1.Workload/MintWorkloadJwt", Kind::Unary),
];

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let Some(((path, kind), body)) = pick(METHODS, data) else {
        return;
    };
    // Bit 7 of the selector: anonymous instead of the workload.
    let channel = if data[0] & 0x80 != 0 {
        &h.anonymous
    } else {
        &h.workload
    };
    call(h, channel, path, kind, body.to_vec());
});
