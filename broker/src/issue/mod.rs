//! Credential issuance: X.509-SVIDs from CSRs and JWT-SVIDs. Pure functions
//! over keys and decisions already made by [`crate::policy`].

pub mod ids;
pub mod jwt;
pub mod x509;

pub use jwt::{Confirmation, JwtClaims, JwtSpec, MintedJwt, mint};
pub use x509::{CsrError, IssuedSvid, MAX_CSR_BYTES, VerifiedCsr, issue_svid};
