//! Serving connections whose HTTP an application's own stack handles: the application reads the
//! `/streamz` upgrade request, asks the front whether to accept it ([`HttpFront::accept_upgrade`]:
//! readiness, the bearer token, the WebSocket headers, a place under the connection limit), answers
//! `101 Switching Protocols` with [`AcceptedUpgrade::response_headers`] (or the
//! [`RejectionAnswer`](super::RejectionAnswer) of the refusal), and hands the upgraded byte stream to
//! [`HttpFront::serve_upgraded`]. The token is thus checked before anything is switched, as on the
//! front's own listener.
//!
//! The front's pre-upgrade bounds (pending handshakes per address, header and handshake timeouts,
//! head size) are the application's to enforce on this path: its HTTP stack reads the request.

use std::fmt;
use std::net::SocketAddr;

use futures_io::{AsyncRead, AsyncWrite};
use streamkit_proto::wire::Codec;

use super::request::RequestHead;
use super::{AcceptedWebSocket, HttpFront, Rejection, Upgrade};
use crate::auth::Principal;
use crate::ws::WsConnection;

/// An upgrade request the front accepted: answer it with `101 Switching Protocols` and
/// [`response_headers`](Self::response_headers), then pass it to [`HttpFront::serve_upgraded`] with
/// the upgraded stream. Holds a place under the server's connection limit until it is served or
/// dropped.
pub struct AcceptedUpgrade {
    upgrade: Upgrade,
    peer: SocketAddr,
}

impl fmt::Debug for AcceptedUpgrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcceptedUpgrade")
            .field("peer", &self.peer)
            .field("codec", &self.upgrade.codec)
            .finish_non_exhaustive()
    }
}

impl AcceptedUpgrade {
    /// The headers of the `101 Switching Protocols` answer: `Upgrade`, `Connection`,
    /// `Sec-WebSocket-Accept`, and `Sec-WebSocket-Protocol` when the client asked for CBOR.
    pub fn response_headers(&self) -> Vec<(&'static str, String)> {
        self.upgrade.response_headers()
    }

    /// The codec the connection will speak.
    pub fn codec(&self) -> Codec {
        self.upgrade.codec
    }

    /// Who connected: the token's subject and scopes.
    pub fn principal(&self) -> &Principal {
        &self.upgrade.principal
    }
}

impl HttpFront {
    /// Decides on a `GET /streamz` upgrade request that the application's HTTP stack read, from its
    /// headers (name, value; names in any case). A refusal is reported like one on the front's own
    /// listener (metrics, rate-limited logs) and carries its answer ([`Rejection::answer`]).
    pub fn accept_upgrade<'a>(
        &self,
        peer: SocketAddr,
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<AcceptedUpgrade, Rejection> {
        let head = RequestHead::upgrade_request(headers);
        match self.upgrade(&head) {
            Ok(upgrade) => Ok(AcceptedUpgrade { upgrade, peer }),
            Err(rejection) => {
                self.inner.handler.on_rejected(peer, &rejection);
                Err(rejection)
            }
        }
    }

    /// Serves a connection the application upgraded after [`accept_upgrade`](Self::accept_upgrade)
    /// (its 101 written): `stream` carries WebSocket frames from here on. Returns when the
    /// connection ends. `stream` is any byte stream of the `futures` I/O traits: on tokio, wrap it in
    /// `async_tungstenite::tokio::TokioAdapter` (or `tokio_util::compat`).
    pub async fn serve_upgraded<S>(&self, accepted: AcceptedUpgrade, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let AcceptedUpgrade { upgrade: Upgrade { principal, codec, permit, .. }, peer } = accepted;
        let inner = &self.inner;
        let connection =
            WsConnection::accepted(Box::new(stream), Vec::new(), inner.config.websocket, codec).await;
        inner.handler.on_websocket(AcceptedWebSocket { connection, principal, codec, peer, permit }).await;
    }

    /// What `GET /metrics` answers: the server's OpenMetrics text (content type
    /// [`CONTENT_TYPE`](crate::metrics::CONTENT_TYPE)).
    pub fn render_metrics(&self) -> String {
        self.inner.handler.render_metrics()
    }
}
