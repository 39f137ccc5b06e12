//! Pluggable authentication: a JWKS key set rotated while clients keep connecting (old tokens work
//! until their key leaves the set), and an authenticator of the application's answering 403.
#![cfg(feature = "tokio")]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use streamkit::auth::{
    AuthError, AuthRefusal, AuthRequest, JwksVerifier, Principal, TokenClaims, TokenSigner,
};
use streamkit::client::{Client, ErrorKind, RetryPolicy};
use streamkit::core::auth::StoreScopes;
use streamkit::runtime::{Runtime, RuntimeExt};
use streamkit::server::ServerConfig;

use crate::support::{any_port, serve};

/// An ES256 key: its signer (with `kid`) and its public JWK.
struct Key {
    signer: TokenSigner,
    jwk: serde_json::Value,
}

fn es256_key(kid: &str) -> Key {
    let pair = rcgen::KeyPair::generate().unwrap();
    // An uncompressed P-256 point: 0x04, then x and y (32 bytes each).
    let point = pair.public_key_raw();
    let (x, y) = point[1..].split_at(32);
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
    });
    let signer = TokenSigner::es256_pem(pair.serialize_pem().as_bytes()).unwrap().with_key_id(kid);
    Key { signer, jwk }
}

fn token(key: &Key) -> String {
    key.signer.sign(&TokenClaims::new(["streamkit::*"], Duration::from_secs(300))).unwrap()
}

fn jwks(keys: &[&Key]) -> Vec<u8> {
    serde_json::to_vec(
        &serde_json::json!({ "keys": keys.iter().map(|key| key.jwk.clone()).collect::<Vec<_>>() }),
    )
    .unwrap()
}

/// Writes the document and moves the file's modification time forward, so that the change is seen
/// even within the file system's timestamp granularity.
fn publish(path: &Path, document: &[u8], generation: u64) {
    std::fs::write(path, document).unwrap();
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() + Duration::from_secs(10 * generation)).unwrap();
}

/// Whether a client with `token` gets a connection (`Ok`) or is refused (`Err` with the kind).
async fn connects(runtime: &Arc<dyn Runtime>, url: &str, token: String) -> Result<(), ErrorKind> {
    let client = Client::builder()
        .runtime(runtime.clone())
        .token(token)
        .retry(RetryPolicy { attempts: 1, ..Default::default() })
        .connect(url)
        .await
        .map_err(|error| error.kind())?;
    client.close().await;
    Ok(())
}

/// Polls until `token`'s connection outcome is `expected` (the key set is looked at once a second).
async fn eventually(runtime: &Arc<dyn Runtime>, url: &str, token: &str, expected: Result<(), ErrorKind>) {
    for _ in 0..100 {
        if connects(runtime, url, token.to_owned()).await == expected {
            return;
        }
        runtime.sleep(Duration::from_millis(50)).await;
    }
    panic!("the connection never became {expected:?}");
}

#[test]
fn keys_rotate_in_a_jwks_file_while_clients_connect() {
    crate::runtimes::run_tokio(|runtime| async move {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let (old, new) = (es256_key("old"), es256_key("new"));
        publish(&path, &jwks(&[&old]), 0);
        let verifier = JwksVerifier::from_file(&path).unwrap();
        assert_eq!(verifier.key_ids(), ["old"]);
        let server = serve(&runtime, ServerConfig::memory(any_port(), verifier)).await;
        let url = server.url();
        let (old_token, new_token) = (token(&old), token(&new));
        assert_eq!(connects(&runtime, &url, old_token.clone()).await, Ok(()));
        assert_eq!(connects(&runtime, &url, new_token.clone()).await, Err(ErrorKind::Unauthorized));

        // Clients with the old key keep connecting throughout the rotation.
        let stop = Arc::new(AtomicBool::new(false));
        let (attempts, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let background = runtime.spawn({
            let (runtime, url, token) = (runtime.clone(), url.clone(), old_token.clone());
            let (stop, attempts, failures) = (stop.clone(), attempts.clone(), failures.clone());
            async move {
                while !stop.load(Ordering::Acquire) {
                    attempts.fetch_add(1, Ordering::AcqRel);
                    if connects(&runtime, &url, token.clone()).await.is_err() {
                        failures.fetch_add(1, Ordering::AcqRel);
                    }
                    runtime.sleep(Duration::from_millis(20)).await;
                }
            }
        });

        // Publish the new key next to the old one: both work.
        publish(&path, &jwks(&[&old, &new]), 1);
        eventually(&runtime, &url, &new_token, Ok(())).await;
        assert_eq!(connects(&runtime, &url, old_token.clone()).await, Ok(()));
        stop.store(true, Ordering::Release);
        background.await.unwrap();
        assert!(attempts.load(Ordering::Acquire) > 0);
        assert_eq!(failures.load(Ordering::Acquire), 0, "a client with a published key was refused");

        // A broken document changes nothing.
        publish(&path, b"{not json", 2);
        runtime.sleep(Duration::from_millis(1100)).await;
        assert_eq!(connects(&runtime, &url, new_token.clone()).await, Ok(()));

        // Retire the old key: its tokens stop working, the new ones go on.
        publish(&path, &jwks(&[&new]), 3);
        eventually(&runtime, &url, &old_token, Err(ErrorKind::Unauthorized)).await;
        assert_eq!(connects(&runtime, &url, new_token).await, Ok(()));
        server.shutdown().await;
    });
}

#[test]
fn an_application_authenticator_decides_and_answers_403() {
    crate::runtimes::run_tokio(|runtime| async move {
        // API keys in a header of their own instead of a JWT.
        let authenticator = |request: &AuthRequest<'_>| -> Result<Principal, AuthRefusal> {
            match request.header("authorization") {
                Some(b"Bearer good-key") => {
                    Ok(Principal::new(StoreScopes::from_scopes(&["streamkit::*"]).unwrap()))
                }
                Some(_) => Err(AuthRefusal::Forbidden(AuthError::Refused("unknown API key".into()))),
                None => Err(AuthError::MissingAuthorization.into()),
            }
        };
        let server = serve(&runtime, ServerConfig::memory(any_port(), authenticator)).await;
        let url = server.url();
        assert_eq!(connects(&runtime, &url, "good-key".into()).await, Ok(()));
        let refused = Client::builder()
            .runtime(runtime.clone())
            .token("bad-key")
            .retry(RetryPolicy { attempts: 1, ..Default::default() })
            .connect(&url)
            .await
            .unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Unauthorized);
        assert!(refused.to_string().contains("403"), "{refused}");
        server.shutdown().await;
    });
}

#[test]
fn a_key_set_picks_keys_by_kid_and_pins_their_algorithm() {
    let (a, b) = (es256_key("a"), es256_key("b"));
    let verifier = JwksVerifier::from_json(&jwks(&[&a, &b])).unwrap();
    assert_eq!(verifier.key_ids(), ["a", "b"]);
    assert!(verifier.verify(&token(&a)).is_ok());
    assert!(verifier.verify(&token(&b)).is_ok());
    // b's token under a's kid: the signature does not match a's key.
    let forged = es256_key("b").signer.with_key_id("a");
    let forged = forged.sign(&TokenClaims::new(["streamkit::*"], Duration::from_secs(60))).unwrap();
    assert_eq!(verifier.verify(&forged), Err(AuthError::InvalidSignature));
    // An HS256 token naming an ES256 key's kid (algorithm confusion) is refused.
    let hs = TokenSigner::hs256(b"secret").unwrap().with_key_id("a");
    let confused = hs.sign(&TokenClaims::new(["streamkit::*"], Duration::from_secs(60))).unwrap();
    assert_eq!(verifier.verify(&confused), Err(AuthError::WrongAlgorithm));
    // Unknown kid, and no kid with several keys.
    let unknown = es256_key("c");
    assert!(matches!(verifier.verify(&token(&unknown)), Err(AuthError::UnknownKey(_))));
    let no_kid =
        TokenSigner::hs256(b"x").unwrap().sign(&TokenClaims::new(["streamkit::*"], Duration::from_secs(60)));
    assert!(matches!(verifier.verify(&no_kid.unwrap()), Err(AuthError::UnknownKey(_))));
    // Encryption keys and keys without kid are not used; a set of only those is refused.
    let mut encryption = a.jwk.clone();
    encryption["use"] = "enc".into();
    let mut anonymous = b.jwk.clone();
    anonymous.as_object_mut().unwrap().remove("kid");
    let unusable = serde_json::to_vec(&serde_json::json!({ "keys": [encryption, anonymous] })).unwrap();
    assert!(matches!(JwksVerifier::from_json(&unusable), Err(streamkit::auth::JwksError::NoUsableKey)));
    // Replacing the document swaps the keys.
    verifier.replace(&jwks(&[&unknown])).unwrap();
    assert!(verifier.verify(&token(&unknown)).is_ok());
    assert!(matches!(verifier.verify(&token(&a)), Err(AuthError::UnknownKey(_))));
}

/// Keys fetched from a URL (an identity provider's `jwks_uri`, served here by axum) and refreshed.
#[cfg(all(feature = "jwks-url", feature = "axum"))]
#[test]
fn keys_fetched_from_a_url_are_refreshed() {
    use std::sync::Mutex;

    crate::runtimes::run_tokio(|runtime| async move {
        let (old, new) = (es256_key("old"), es256_key("new"));
        let published = Arc::new(Mutex::new(jwks(&[&old])));
        let app: axum::Router = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get({
                let published = published.clone();
                move || {
                    let document = published.lock().unwrap().clone();
                    async move { document }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
        let provider = tokio::spawn(async move { axum::serve(listener, app).await });

        let verifier = JwksVerifier::from_url(&url, Duration::from_secs(1)).await.unwrap();
        assert_eq!(verifier.key_ids(), ["old"]);
        assert!(verifier.verify(&token(&old)).is_ok());
        *published.lock().unwrap() = jwks(&[&new]);
        let mut rotated = false;
        for _ in 0..60 {
            if verifier.verify(&token(&new)).is_ok() {
                rotated = true;
                break;
            }
            runtime.sleep(Duration::from_millis(100)).await;
        }
        assert!(rotated, "the new key was never fetched");
        assert!(matches!(verifier.verify(&token(&old)), Err(AuthError::UnknownKey(_))));

        // A provider that answers garbage or goes away leaves the keys in place.
        *published.lock().unwrap() = b"<html>maintenance</html>".to_vec();
        runtime.sleep(Duration::from_millis(1500)).await;
        assert!(verifier.verify(&token(&new)).is_ok());
        provider.abort();
        let unreachable =
            JwksVerifier::from_url("http://127.0.0.1:1/jwks.json", Duration::from_secs(60)).await;
        assert!(matches!(unreachable, Err(streamkit::auth::JwksError::Fetch { .. })));
    });
}
