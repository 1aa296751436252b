//! X.509-SVID issuance: the broker decides every field, whatever the CSR
//! asks; renewal needs a valid SVID from the right CA.

use std::time::Duration;

use credbroker_client::Evidence;
use credbroker_e2e::{TestBroker, x509};
use credbroker_proto::v1::{AttestRequest, RenewX509Request, attest_request};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
use tonic::Code;

#[tokio::test]
async fn leaf_ignores_ca_true_extra_sans_and_foreign_spiffe_ids() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &[], &[]);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut params =
        CertificateParams::new(vec!["evil.example.com".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.subject_alt_names.push(SanType::URI(
        "spiffe://dev.example.org/admin".try_into().unwrap(),
    ));
    params.subject_alt_names.push(SanType::URI(
        "spiffe://prod.example.org/api".try_into().unwrap(),
    ));
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let csr = params.serialize_request(&key).unwrap().der().to_vec();
    let mut raw = broker.raw_workload(None).await;
    let response = raw
        .attest(AttestRequest {
            evidence: Some(attest_request::Evidence::JoinToken(
                broker.join_token("dev", "api"),
            )),
            csr,
            expected_identity: None,
            jwts: vec![],
        })
        .await
        .expect("attest")
        .into_inner();
    let svid = response.svid.unwrap();
    let leaf = x509::parse(&svid.cert_chain[0]);
    let ca = x509::parse(&response.trust_bundle[0]);
    x509::assert_svid(&leaf, &ca, "spiffe://dev.example.org/api");
    // The P-384 key from the CSR is the certificate's key.
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
}

#[tokio::test]
async fn a_csr_with_a_broken_signature_is_refused() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &[], &[]);
    let token = broker.join_token("dev", "api");
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut csr = CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec();
    // Change the signed subject ("rcgen self signed cert") after signing.
    let at = csr
        .windows(5)
        .position(|w| w == b"rcgen")
        .expect("subject in CSR");
    csr[at] = b'x';
    let mut raw = broker.raw_workload(None).await;
    let err = raw
        .attest(AttestRequest {
            evidence: Some(attest_request::Evidence::JoinToken(token)),
            csr,
            expected_identity: None,
            jwts: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("signature does not verify"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn renewal_requires_a_valid_svid_from_the_environment_ca() {
    // Short lifetimes so expiry happens within the test.
    let broker =
        TestBroker::start_with(&["dev"], "[ttl]\nfloor = \"1s\"\ndefault_x509 = \"2s\"\n").await;
    broker.create_identity("dev", "api", &[], &[]);
    let client = broker.client().await;
    let attested = client
        .attest(&Evidence::JoinToken(broker.join_token("dev", "api")), &[])
        .await
        .unwrap();

    // No client certificate.
    let mut anonymous = broker.raw_workload(None).await;
    let err = anonymous
        .renew_x509(RenewX509Request { csr: vec![] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // A self-made "SVID" for the same SPIFFE ID: the TLS handshake refuses it.
    let forged_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut forged = CertificateParams::default();
    forged.subject_alt_names = vec![SanType::URI(
        "spiffe://dev.example.org/api".try_into().unwrap(),
    )];
    forged.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let forged_cert = forged.self_signed(&forged_key).unwrap();
    let refused = match broker
        .channel(Some((forged_cert.pem(), forged_key.serialize_pem())))
        .await
    {
        Err(_) => true,
        Ok(channel) => credbroker_proto::v1::workload_client::WorkloadClient::new(channel)
            .renew_x509(RenewX509Request { csr: vec![] })
            .await
            .is_err(),
    };
    assert!(
        refused,
        "a self-signed client certificate must not be accepted"
    );

    // Garbage CSR from a valid SVID: INVALID_ARGUMENT, not an issuance.
    let session = client.authenticated(&attested.svid).await.unwrap();
    let mut raw = broker
        .raw_workload(Some((
            attested.svid.cert_chain_pem(),
            attested.svid.private_key_pem(),
        )))
        .await;
    let err = raw
        .renew_x509(RenewX509Request {
            csr: b"junk".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // A valid SVID renews.
    let (renewed, _) = session.renew().await.expect("renew while valid");
    assert!(renewed.remaining() <= Duration::from_secs(2));

    // Once expired, the old SVID is refused.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let stale = client.authenticated(&attested.svid).await;
    let refused = match stale {
        Err(_) => true,
        Ok(s) => s.renew().await.is_err(),
    };
    assert!(refused, "an expired SVID must not renew");
}

#[tokio::test]
async fn an_svid_from_one_environment_cannot_act_in_another() {
    let broker = TestBroker::start_with(&["staging", "prod"], "").await;
    broker.create_identity("staging", "api", &["billing"], &[]);
    broker.create_identity("prod", "api", &["billing"], &[]);
    let client = broker.client().await;
    let staging = client
        .attest(
            &Evidence::JoinToken(broker.join_token("staging", "api")),
            &[],
        )
        .await
        .unwrap();
    // The staging SVID only ever yields staging credentials.
    let session = client.authenticated(&staging.svid).await.unwrap();
    let jwt = session
        .fetch_jwt(&credbroker_client::JwtRequest::audience("billing"))
        .await
        .unwrap();
    assert_eq!(jwt.spiffe_id, "spiffe://staging.example.org/api");
    let (renewed, bundle) = session.renew().await.unwrap();
    assert_eq!(renewed.spiffe_id, "spiffe://staging.example.org/api");
    let prod = client
        .attest(&Evidence::JoinToken(broker.join_token("prod", "api")), &[])
        .await
        .unwrap();
    let prod_ca = x509::parse(&prod.bundle.certs[0]);
    let leaf = x509::parse(&renewed.cert_chain[0]);
    assert!(
        leaf.verify_signature(Some(prod_ca.public_key())).is_err(),
        "staging leaf must not verify with the prod CA"
    );
    assert_ne!(bundle.certs[0], prod.bundle.certs[0]);
}
