//! The server on an axum application (feature `axum`): [`router`] serves `GET /streamz` from the
//! application's own listener, next to its own routes, and [`router_with_probes`] adds `/healthz`,
//! `/readyz` and `/metrics`. The upgrade is answered by hyper on the application's connection; the
//! front checks the token first ([`HttpFront::accept_upgrade`]), so a refused token gets its `401`
//! and never an upgraded socket, then runs the WebSocket on the upgraded stream
//! ([`HttpFront::serve_upgraded`]).
//!
//! ```no_run
//! # async fn run(secret: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
//! use axum::Router;
//! use axum::routing::get;
//! use streamkit::auth::JwtVerifier;
//! use streamkit::server::{ServerConfig, start_embedded};
//!
//! let runtime = streamkit::runtime::default_runtime().ok_or("no runtime")?;
//! let config = ServerConfig::memory("0.0.0.0:0".parse()?, JwtVerifier::hs256(secret)?);
//! let streamkit = start_embedded(runtime, config).await?;
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "my application" }))
//!     .merge(streamkit::http::axum::router(streamkit.front().clone()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await?;
//! # Ok(()) }
//! ```
//!
//! A `Router` is a tower `Service`, so the same routes serve any tower-based stack running on hyper
//! (`Router::into_service`); hyper must be the server, since the upgrade is hyper's.
//!
//! The peer address in logs comes from axum's `ConnectInfo<SocketAddr>` when the application serves
//! with `into_make_service_with_connect_info`; without it, connections are logged as `0.0.0.0:0`.

use std::net::{Ipv4Addr, SocketAddr};

use async_tungstenite::tokio::TokioAdapter;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{StatusCode, Version, header};
use axum::response::Response;
use axum::routing::get;
use hyper_util::rt::TokioIo;

use super::{HttpFront, ReadinessState, Rejection, STREAMZ_PATH};

/// `GET /streamz` on `front`, to merge into (or nest in) an application's router.
pub fn router<S>(front: HttpFront) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new().route(STREAMZ_PATH, get(move |request: Request| streamz(front.clone(), request)))
}

/// [`router`] plus the probes and metrics of the front's own listener: `GET /healthz` (200 `ok`),
/// `GET /readyz` (200 `ready`, 503 `starting` or `draining`) and `GET /metrics` (OpenMetrics).
pub fn router_with_probes<S>(front: HttpFront) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let readiness = front.readiness().clone();
    let metrics = front.clone();
    router(front)
        .route("/healthz", get(|| async { text(StatusCode::OK, "ok") }))
        .route(
            "/readyz",
            get(move || {
                let state = readiness.state();
                async move {
                    match state {
                        ReadinessState::Ready => text(StatusCode::OK, "ready"),
                        ReadinessState::Starting => text(StatusCode::SERVICE_UNAVAILABLE, "starting"),
                        ReadinessState::Draining => text(StatusCode::SERVICE_UNAVAILABLE, "draining"),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let body = metrics.render_metrics();
                async move { response(StatusCode::OK, crate::metrics::CONTENT_TYPE, body) }
            }),
        )
}

/// Accepts or refuses the upgrade, and serves the upgraded connection on its own task.
async fn streamz(front: HttpFront, mut request: Request) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), |ConnectInfo(peer)| *peer);
    if request.version() != Version::HTTP_11 {
        return refusal(&Rejection::BadRequest("websocket upgrade needs HTTP/1.1"));
    }
    let headers = request.headers().iter().map(|(name, value)| (name.as_str(), value.as_bytes()));
    let accepted = match front.accept_upgrade(peer, headers) {
        Ok(accepted) => accepted,
        Err(rejection) => return refusal(&rejection),
    };
    let mut switching = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (name, value) in accepted.response_headers() {
        switching = switching.header(name, value);
    }
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => front.serve_upgraded(accepted, TokioAdapter::new(TokioIo::new(upgraded))).await,
            Err(error) => tracing::debug!(%peer, %error, "websocket upgrade not completed"),
        }
    });
    switching
        .body(Body::empty())
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "upgrade failed"))
}

/// The answer of a refused upgrade, as the front's own listener writes it.
fn refusal(rejection: &Rejection) -> Response {
    let answer = rejection.answer();
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut refused = text(status, answer.body);
    for (name, value) in answer.headers {
        if let Ok(value) = value.parse() {
            refused.headers_mut().insert(name, value);
        }
    }
    refused.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    // As on the front's own listener: a refused upgrade ends the connection rather than keeping a
    // socket that wanted to be a WebSocket.
    refused.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    refused
}

fn text(status: StatusCode, body: &'static str) -> Response {
    response(status, "text/plain; charset=utf-8", body.to_owned())
}

fn response(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}
