//! The local server the documentation's examples run against, so every example on a [`Client`]
//! method is a doctest that really runs (hidden from the docs; not part of the API).

use std::error::Error;
use std::time::Duration;

use crate::auth::{JwtVerifier, TokenClaims, TokenSigner};
use crate::client::Client;
use crate::server::{RunningServer, ServerConfig, start};

/// The HS256 secret of the examples' servers.
const SECRET: &[u8] = b"streamkit documentation example";

/// A server on a free loopback port with memory stores, its `ws://` URL and an admin token for it.
pub async fn server() -> Result<(RunningServer, String, String), Box<dyn Error>> {
    let runtime = crate::runtime::default_runtime().ok_or("no runtime")?;
    let server =
        start(runtime, ServerConfig::memory("127.0.0.1:0".parse()?, JwtVerifier::hs256(SECRET)?)).await?;
    let url = server.url();
    let token =
        TokenSigner::hs256(SECRET)?.sign(&TokenClaims::new(["streamkit::*"], Duration::from_secs(600)))?;
    Ok((server, url, token))
}

/// [`server`] and a client connected to it over a socket.
pub async fn client() -> Result<(RunningServer, Client), Box<dyn Error>> {
    let (server, url, token) = server().await?;
    let client = crate::connect(url, token).await?;
    Ok((server, client))
}
