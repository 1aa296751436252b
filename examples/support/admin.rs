//! The Admin API calls an operator makes before a workload can attest:
//! registering an identity and creating a join token for it.

use anyhow::{Context, Result};
use credbroker_proto::v1::admin_client::AdminClient;
use credbroker_proto::v1::{CreateIdentityRequest, CreateJoinTokenRequest, IdentityRef};
use tonic::transport::Channel;

use super::{ENV, Endpoint};

/// An Admin API client authenticated with the admin client certificate from
/// the broker's data directory, as the `credbroker` CLI makes one; connecting
/// and every call are bounded (see [`credbroker_examples::broker::Broker`]).
pub async fn admin_client(endpoint: &Endpoint) -> Result<AdminClient<Channel>> {
    let broker = credbroker_examples::broker::Broker::from_data_dir(
        endpoint.url.clone(),
        &endpoint.data_dir,
    )?;
    Ok(broker.admin().await?.grpc_clone())
}

/// An identity to register in [`ENV`].
#[derive(Debug, Clone, Copy)]
pub struct NewIdentity<'a> {
    /// The identity's name within the environment.
    pub name: &'a str,
    /// Recorded with the identity: who runs it.
    pub owner: &'a str,
    /// Recorded with the identity: what it is for.
    pub purpose: &'a str,
    /// JWT audiences it may ask for.
    pub audiences: &'a [&'a str],
    /// Scopes it may ask for.
    pub scopes: &'a [&'a str],
}

/// Registers `identity`, as an operator would with
/// `credbroker identity create`.
pub async fn create_identity(
    admin: &mut AdminClient<Channel>,
    identity: NewIdentity<'_>,
) -> Result<()> {
    let strings = |values: &[&str]| values.iter().map(|&v| v.to_owned()).collect();
    admin
        .create_identity(CreateIdentityRequest {
            env: ENV.into(),
            name: identity.name.into(),
            owner: identity.owner.into(),
            purpose: identity.purpose.into(),
            audiences: strings(identity.audiences),
            scopes: strings(identity.scopes),
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating identity {}", identity.name))?;
    Ok(())
}

/// Creates a join token for identity `name` in [`ENV`] that attests up to
/// `uses` times and does not expire, as an operator would with
/// `credbroker token create`.
pub async fn join_token(admin: &mut AdminClient<Channel>, name: &str, uses: u32) -> Result<String> {
    let token = admin
        .create_join_token(CreateJoinTokenRequest {
            identity: Some(IdentityRef {
                env: ENV.into(),
                name: name.into(),
            }),
            ttl_seconds: 0,
            uses,
        })
        .await
        .with_context(|| format!("creating a join token for {name}"))?
        .into_inner();
    Ok(token.token)
}
