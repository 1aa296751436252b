//! Every Admin RPC, decoded and handled by the broker as the bootstrap
//! admin (every role check passes, so the handlers' own validation is what
//! is fuzzed). The first byte picks the method; the rest is the raw body.
#![no_main]

use credbroker_fuzz::{Kind, call, harness, pick};
use libfuzzer_sys::fuzz_target;

const METHODS: &[(&str, Kind)] = &[
    ("/credbroker.v1.Admin/CreateIdentity", Kind::Unary),
    ("/credbroker.v1.Admin/GetIdentity", Kind::Unary),
    ("/credbroker.v1.Admin/ListIdentities", Kind::Unary),
    ("/credbroker.v1.Admin/DisableIdentity", Kind::Unary),
    ("/credbroker.v1.Admin/EnableIdentity", Kind::Unary),
    ("/credbroker.v1.Admin/RetireIdentity", Kind::Unary),
    ("/credbroker.v1.Admin/CreateJoinToken", Kind::Unary),
    ("/credbroker.v1.Admin/Revoke", Kind::Unary),
    ("/credbroker.v1.Admin/ListRevocations", Kind::Unary),
    ("/credbroker.v1.Admin/QueryAudit", Kind::Unary),
    ("/credbroker.v1.Admin/VerifyAudit", Kind::Unary),
    ("/credbroker.v1.Admin/VerifyAuditExport", Kind::ClientStream),
    ("/credbroker.v1.Admin/ListKeys", Kind::Unary),
    ("/credbroker.v1.Admin/RotateKeys", Kind::Unary),
    ("/credbroker.v1.Admin/RetireKey", Kind::Unary),
    ("/credbroker.v1.Admin/CreateOperator", Kind::Unary),
    ("/credbroker.v1.Admin/ListOperators", Kind::Unary),
    ("/credbroker.v1.Admin/RevokeOperator", Kind::Unary),
];

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let Some(((path, kind), body)) = pick(METHODS, data) else {
        return;
    };
    call(h, &h.admin, path, kind, body.to_vec());
});
