//! The node-agent RPCs of the broker, on a connection authenticated with
//! the node's own SVID.

use credbroker_proto::v1::{
    IdentityRef, MintWorkloadJwtRequest, MintWorkloadSvidRequest, NodeEntriesUpdate,
    WatchNodeEntriesRequest,
};

use super::entries::EntryKey;
use crate::client::{WorkloadClient, new_key_and_csr};
use crate::error::ClientError;
use crate::request::JwtRequest;
use crate::svid::{JwtSvid, TrustBundle, X509Svid};

fn identity_ref(key: &EntryKey) -> IdentityRef {
    IdentityRef {
        env: key.env.clone(),
        name: key.name.clone(),
    }
}

impl WorkloadClient {
    /// Streams the identities this node serves: a snapshot, then changes.
    pub async fn watch_node_entries(
        &self,
    ) -> Result<tonic::Streaming<NodeEntriesUpdate>, ClientError> {
        self.call(|mut grpc| async move {
            Ok(grpc
                .watch_node_entries(WatchNodeEntriesRequest {})
                .await?
                .into_inner())
        })
        .await
    }

    /// An X.509-SVID for a workload this node serves, for a key pair
    /// generated here (only its CSR goes to the broker).
    pub async fn mint_workload_svid(
        &self,
        workload: &EntryKey,
    ) -> Result<(X509Svid, TrustBundle), ClientError> {
        let (key, csr) = new_key_and_csr()?;
        // A mint from a CSR is safe to repeat on another broker.
        let request = MintWorkloadSvidRequest {
            identity: Some(identity_ref(workload)),
            csr,
        };
        let response = self
            .call(|mut grpc| {
                let request = request.clone();
                async move { Ok(grpc.mint_workload_svid(request).await?.into_inner()) }
            })
            .await?;
        let svid = response
            .svid
            .ok_or_else(|| ClientError::InvalidResponse("mint returned no SVID".into()))?;
        Ok((
            X509Svid::from_proto(svid, key),
            TrustBundle::from_der(response.trust_bundle),
        ))
    }

    /// A JWT-SVID for a workload this node serves.
    pub async fn mint_workload_jwt(
        &self,
        workload: &EntryKey,
        request: &JwtRequest,
    ) -> Result<JwtSvid, ClientError> {
        let request = MintWorkloadJwtRequest {
            identity: Some(identity_ref(workload)),
            jwt: Some(request.to_proto()),
        };
        let response = self
            .call(|mut grpc| {
                let request = request.clone();
                async move { Ok(grpc.mint_workload_jwt(request).await?.into_inner()) }
            })
            .await?;
        response
            .jwt
            .map(JwtSvid::from)
            .ok_or_else(|| ClientError::InvalidResponse("mint returned no JWT".into()))
    }
}
