//! CSR parsing: a workload's CSR is the broker's largest untrusted binary
//! input (DER, self-signature, key type allow-list, extension rules).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(csr) = credbroker::issue::VerifiedCsr::parse(data) {
        let _ = csr.key_sha256();
    }
});
