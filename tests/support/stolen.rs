//! What an attacker who stole a data directory's KEK and database holds: an
//! environment CA's private key, unsealed exactly as the broker unseals it
//! (AES-256-GCM under the KEK, the key's label as associated data). Tests
//! use it to forge certificates that pass TLS, so that the broker's own
//! checks behind TLS are what refuses them.

use base64::Engine;
use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType,
};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use rustls_pki_types::PrivatePkcs8KeyDer;
use sqlx::Row;

use crate::TestBroker;

/// The newest X.509 CA of `env`: its certificate (DER) and a signer.
pub async fn environment_ca(broker: &TestBroker, env: &str) -> (Vec<u8>, Issuer<'static, KeyPair>) {
    let kek_text = std::fs::read_to_string(broker.data_dir().join("kek")).expect("kek file");
    let kek = base64::engine::general_purpose::STANDARD
        .decode(kek_text.trim())
        .expect("base64 KEK");
    let url = format!("sqlite://{}?mode=ro", broker.database().display());
    let mut db = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("open the database");
    let row = sqlx::query(
        "SELECT cert_der, sealed_key FROM key_material
         WHERE env = ? AND kind = 'x509-ca' ORDER BY id DESC LIMIT 1",
    )
    .bind(env)
    .fetch_one(&mut db)
    .await
    .expect("the environment's CA row");
    let cert: Vec<u8> = row.get("cert_der");
    let sealed: Vec<u8> = row.get("sealed_key");
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &kek).expect("AES key"));
    let nonce = Nonce::try_assume_unique_for_key(&sealed[1..1 + NONCE_LEN]).expect("nonce");
    let mut buf = sealed[1 + NONCE_LEN..].to_vec();
    let label = format!("credbroker/{env}/x509-ca");
    let pkcs8 = key
        .open_in_place(nonce, Aad::from(label.as_bytes()), &mut buf)
        .expect("unseal the CA key")
        .to_vec();
    let key_pair = KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(pkcs8),
        &PKCS_ECDSA_P256_SHA256,
    )
    .expect("CA key");
    let issuer = Issuer::from_ca_cert_der(&cert.clone().into(), key_pair).expect("issuer");
    (cert, issuer)
}

/// A client certificate for `spiffe_id` signed by `issuer`, valid now, with
/// the SVID profile: (PEM certificate, PEM key).
pub fn forge_svid(issuer: &Issuer<'static, KeyPair>, spiffe_id: &str) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().expect("URI"))];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::minutes(10);
    let cert = params.signed_by(&key, issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}
