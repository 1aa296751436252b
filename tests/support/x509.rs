//! Certificate checks for tests, done with x509-parser (a standard parser
//! this project did not write).

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;

/// Parses every certificate in a PEM file's contents.
pub fn pem_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM certificates")
}

/// Parses one DER certificate.
pub fn parse(der: &[u8]) -> X509Certificate<'_> {
    x509_parser::parse_x509_certificate(der).expect("X.509").1
}

/// The URI SANs of `cert`.
pub fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.subject_alternative_name()
        .expect("SAN extension parses")
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every SAN of `cert`, as debug strings.
pub fn all_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.subject_alternative_name()
        .expect("SAN extension parses")
        .map(|san| {
            san.value
                .general_names
                .iter()
                .map(|n| format!("{n:?}"))
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts the SPIFFE X509-SVID leaf profile: one URI SAN equal to
/// `spiffe_id`, CA:false, critical keyUsage with only digitalSignature,
/// EKU serverAuth + clientAuth, and a signature by `ca`.
pub fn assert_svid(leaf: &X509Certificate<'_>, ca: &X509Certificate<'_>, spiffe_id: &str) {
    assert_eq!(
        all_sans(leaf).len(),
        1,
        "exactly one SAN: {:?}",
        all_sans(leaf)
    );
    assert_eq!(uri_sans(leaf), vec![spiffe_id.to_owned()]);
    let bc = leaf
        .basic_constraints()
        .expect("bc parses")
        .expect("basicConstraints present");
    assert!(!bc.value.ca, "leaf must be CA:false");
    let ku = leaf
        .key_usage()
        .expect("ku parses")
        .expect("keyUsage present");
    assert!(ku.critical, "keyUsage must be critical");
    assert!(ku.value.digital_signature());
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
    let eku = leaf
        .extended_key_usage()
        .expect("eku parses")
        .expect("EKU present");
    assert!(eku.value.server_auth && eku.value.client_auth);
    leaf.verify_signature(Some(ca.public_key()))
        .expect("leaf signed by the environment CA");
    assert!(
        leaf.validity().not_after <= ca.validity().not_after,
        "leaf must not outlive its CA"
    );
}

/// A PKCS#10 CSR (DER) for a fresh P-256 key, as a workload would send.
pub fn csr() -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    rcgen::CertificateParams::default()
        .serialize_request(&key)
        .expect("CSR")
        .der()
        .to_vec()
}
