//! Proof of what the workload is, and where it comes from. Platform
//! evidence is (re-)read at every attestation: the kubelet rotates its
//! token file, a CI runner mints a fresh token per request, the instance
//! metadata service answers every time. Such evidence can always be
//! presented again, so a source whose SVID expired re-attests by itself.

use std::path::PathBuf;

use base64::Engine;
use credbroker_proto::v1::AwsIid;
use credbroker_proto::v1::attest_request::Evidence as ProtoEvidence;

use crate::error::ClientError;
use crate::http::HttpFetcher;

/// Default address of the EC2 instance metadata service.
pub const DEFAULT_IMDS_URL: &str = "http://169.254.169.254";
/// Largest token file read.
const MAX_TOKEN_FILE: u64 = 64 * 1024;

/// Proof of what the workload is.
#[derive(Clone)]
#[non_exhaustive]
pub enum Evidence {
    /// A join token from `credbroker token create`.
    JoinToken(String),
    /// A Kubernetes projected service-account token file (re-read at every
    /// attestation, since the kubelet rotates it).
    KubernetesTokenFile(PathBuf),
    /// A file holding an OIDC ID token (re-read at every attestation).
    OidcTokenFile(PathBuf),
    /// A GitHub Actions OIDC token for `audience`, fetched from the
    /// runner (`ACTIONS_ID_TOKEN_REQUEST_URL` with
    /// `ACTIONS_ID_TOKEN_REQUEST_TOKEN`; the job needs `id-token: write`).
    GithubActions {
        /// The `aud` to request (the broker attestor's `audience`).
        audience: String,
    },
    /// The EC2 instance identity document, read from the instance metadata
    /// service (IMDSv2) at `imds_url` (normally [`DEFAULT_IMDS_URL`]).
    AwsIid {
        /// Base URL of the metadata service.
        imds_url: String,
    },
}

impl std::fmt::Debug for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::JoinToken(_) => f.write_str("JoinToken(<redacted>)"),
            Self::KubernetesTokenFile(p) => write!(f, "KubernetesTokenFile({})", p.display()),
            Self::OidcTokenFile(p) => write!(f, "OidcTokenFile({})", p.display()),
            Self::GithubActions { audience } => write!(f, "GithubActions({audience})"),
            Self::AwsIid { imds_url } => write!(f, "AwsIid({imds_url})"),
        }
    }
}

fn evidence_err(what: impl Into<String>) -> ClientError {
    ClientError::Evidence(what.into())
}

async fn read_token(path: &PathBuf) -> Result<String, ClientError> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| evidence_err(format!("cannot read token file {}: {e}", path.display())))?;
    if meta.len() > MAX_TOKEN_FILE {
        return Err(evidence_err(format!(
            "token file {} is larger than {MAX_TOKEN_FILE} bytes",
            path.display()
        )));
    }
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| evidence_err(format!("cannot read token file {}: {e}", path.display())))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(evidence_err(format!(
            "token file {} is empty",
            path.display()
        )));
    }
    Ok(token.to_owned())
}

/// Percent-encodes a query value (RFC 3986 unreserved characters kept).
fn query_escape(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

async fn github_token(audience: &str) -> Result<String, ClientError> {
    let var = |name: &str| {
        std::env::var(name).map_err(|_| {
            evidence_err(format!(
                "{name} is not set: run inside a GitHub Actions job with `permissions: id-token: write`"
            ))
        })
    };
    let url = var("ACTIONS_ID_TOKEN_REQUEST_URL")?;
    let bearer = var("ACTIONS_ID_TOKEN_REQUEST_TOKEN")?;
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}audience={}", query_escape(audience));
    let auth = format!("bearer {bearer}");
    let body = HttpFetcher::new(None)
        .request(
            "GET",
            &url,
            &[("authorization", &auth), ("accept", "application/json")],
        )
        .await
        .map_err(|e| evidence_err(format!("GitHub Actions token request: {e}")))?;
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|_| evidence_err("GitHub Actions token response is not JSON"))?;
    value
        .get("value")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .ok_or_else(|| evidence_err("GitHub Actions token response has no value"))
}

async fn aws_iid(imds_url: &str) -> Result<AwsIid, ClientError> {
    let base = imds_url.trim_end_matches('/');
    let http = HttpFetcher::new(None);
    let imds = |e| evidence_err(format!("instance metadata service at {base}: {e}"));
    // IMDSv2: a session token first, then every read with it.
    let token = http
        .request(
            "PUT",
            &format!("{base}/latest/api/token"),
            &[("x-aws-ec2-metadata-token-ttl-seconds", "60")],
        )
        .await
        .map_err(imds)?;
    let token = String::from_utf8(token).map_err(|_| evidence_err("IMDS token is not text"))?;
    let header = [("x-aws-ec2-metadata-token", token.trim())];
    let document = http
        .request(
            "GET",
            &format!("{base}/latest/dynamic/instance-identity/document"),
            &header,
        )
        .await
        .map_err(imds)?;
    let signature = http
        .request(
            "GET",
            &format!("{base}/latest/dynamic/instance-identity/signature"),
            &header,
        )
        .await
        .map_err(imds)?;
    let signature = String::from_utf8(signature)
        .map_err(|_| evidence_err("IMDS signature is not text"))?
        .split_whitespace()
        .collect::<String>();
    if base64::engine::general_purpose::STANDARD
        .decode(&signature)
        .is_err()
    {
        return Err(evidence_err("IMDS signature is not base64"));
    }
    Ok(AwsIid {
        document,
        signature,
    })
}

impl Evidence {
    /// Whether the same evidence can be presented again after a successful
    /// attestation (true for everything read from the platform; a join
    /// token only if created with several uses, which the SDK cannot know).
    pub fn is_rereadable(&self) -> bool {
        !matches!(self, Self::JoinToken(_))
    }

    /// Reads the evidence now, as the broker wants it.
    pub(crate) async fn resolve(&self) -> Result<ProtoEvidence, ClientError> {
        Ok(match self {
            Self::JoinToken(t) => ProtoEvidence::JoinToken(t.clone()),
            Self::KubernetesTokenFile(p) => ProtoEvidence::KubernetesToken(read_token(p).await?),
            Self::OidcTokenFile(p) => ProtoEvidence::OidcToken(read_token(p).await?),
            Self::GithubActions { audience } => {
                ProtoEvidence::OidcToken(github_token(audience).await?)
            }
            Self::AwsIid { imds_url } => ProtoEvidence::AwsIid(aws_iid(imds_url).await?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_query_values() {
        assert_eq!(query_escape("https://x y"), "https%3A%2F%2Fx%20y");
        assert_eq!(query_escape("credbroker"), "credbroker");
    }

    #[tokio::test]
    async fn token_files_are_read_fresh_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let ev = Evidence::KubernetesTokenFile(path.clone());
        assert!(ev.resolve().await.is_err(), "missing file");
        std::fs::write(&path, "first\n").unwrap();
        assert!(
            matches!(ev.resolve().await.unwrap(), ProtoEvidence::KubernetesToken(t) if t == "first")
        );
        std::fs::write(&path, "second").unwrap();
        assert!(
            matches!(ev.resolve().await.unwrap(), ProtoEvidence::KubernetesToken(t) if t == "second")
        );
        std::fs::write(&path, "  ").unwrap();
        assert!(
            ev.resolve()
                .await
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        assert!(format!("{:?}", Evidence::JoinToken("cbjt_secret".into())).contains("redacted"));
    }
}
