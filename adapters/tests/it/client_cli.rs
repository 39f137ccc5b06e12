//! Smoke tests of the `streamkit` binary: `serve` in a child process on a free port, then `token`,
//! `produce`, `consume`, `peek`, `spaces`, `segments`, and a graceful stop on SIGTERM.
#![cfg(feature = "cli")]

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::support::{announced_address, stdout_lines, terminate};

const BIN: &str = env!("CARGO_BIN_EXE_streamkit");

/// A `streamkit serve` child, stopped (SIGTERM, then kill) when dropped.
pub(crate) struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Server {
    fn start(secret: Option<&str>, data: &std::path::Path) -> Self {
        Self::start_with(secret, data, &[])
    }

    /// [`start`](Self::start) with more `serve` arguments.
    pub(crate) fn start_with(
        secret: Option<&str>,
        data: &std::path::Path,
        extra: &[&std::ffi::OsStr],
    ) -> Self {
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .env_remove("STREAMKIT_JWT_SECRET")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(secret) = secret {
            command.env("STREAMKIT_JWT_SECRET", secret);
        }
        let mut child = command.spawn().unwrap();
        let lines = stdout_lines(&mut child);
        Self { child, lines }
    }

    /// Stdout lines up to and including the "listening" line; the address it names.
    fn wait_listening(&self) -> (String, Vec<String>) {
        let (addr, before) = self.wait_address();
        (format!("ws://{addr}"), before)
    }

    /// The address the "listening" line names, and the lines before it.
    pub(crate) fn wait_address(&self) -> (std::net::SocketAddr, Vec<String>) {
        announced_address(&self.lines)
    }

    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        terminate(&mut self.child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the binary with `args`, `stdin` and the client environment; its stdout.
pub(crate) fn run(env: &[(&str, &str)], args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "streamkit {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A token for every store, minted by `streamkit token` with `secret`.
pub(crate) fn admin_token_of(secret: &str) -> String {
    let token =
        run(&[("STREAMKIT_JWT_SECRET", secret)], &["token", "--scope", "streamkit::*", "--ttl", "5m"], "");
    token.trim().to_owned()
}

/// The environment of a client command for `url`, `token` and `store`.
pub(crate) fn client_env<'a>(url: &'a str, token: &'a str, store: &'a str) -> [(&'static str, &'a str); 3] {
    [("STREAMKIT_URL", url), ("STREAMKIT_TOKEN", token), ("STREAMKIT_STORE", store)]
}

#[test]
fn serve_token_produce_consume_spaces() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "cli-smoke-secret";
    let mut server = Server::start(Some(secret), &dir.path().join("data"));
    let (url, _) = server.wait_listening();
    let (token, store) = (admin_token_of(secret), uuid::Uuid::new_v4().to_string());
    let env = client_env(&url, &token, &store);

    run(&env, &["produce", "--space", "sp", "--segment", "sg"], "alpha\nbeta\ngamma\n");
    // A second run appends after what is there.
    run(&env, &["produce", "--space", "sp", "--segment", "sg", "--cbor"], "delta\n");
    assert_eq!(
        run(&env, &["consume", "--space", "sp", "--segment", "sg"], ""),
        "sp/sg:1\talpha\nsp/sg:2\tbeta\nsp/sg:3\tgamma\nsp/sg:4\tdelta\n"
    );
    assert_eq!(
        run(&env, &["consume", "--space", "sp", "--segment", "sg", "--from", "4"], ""),
        "sp/sg:4\tdelta\n"
    );
    let json = run(&env, &["consume", "--space", "sp", "--json", "--cbor"], "");
    assert_eq!(json.lines().count(), 4);
    assert!(json.lines().next().unwrap().contains(r#""payload":"YWxwaGE=""#), "{json}");
    assert!(run(&env, &["peek", "--space", "sp", "--segment", "sg"], "").starts_with(r#"{"sequence":4,"#));
    assert_eq!(run(&env, &["spaces"], ""), "sp\n");
    assert_eq!(run(&env, &["segments", "--space", "sp"], ""), "sg\n");

    let status = server.terminate();
    assert!(status.success(), "graceful stop: {status:?}");
    // The embedded store kept the data under --data.
    assert!(dir.path().join("data").join(&store).is_dir());
}

#[test]
fn serve_without_a_key_prints_a_working_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(None, dir.path());
    let (url, printed) = server.wait_listening();
    let token =
        printed.iter().find_map(|line| line.strip_prefix("STREAMKIT_TOKEN=")).expect("a token is printed");
    let secret = printed.iter().find_map(|line| line.strip_prefix("STREAMKIT_JWT_SECRET=")).unwrap();
    assert_eq!(secret.len(), 64, "a random 256-bit secret");
    let store = uuid::Uuid::new_v4().to_string();
    let env =
        [("STREAMKIT_URL", url.as_str()), ("STREAMKIT_TOKEN", token), ("STREAMKIT_STORE", store.as_str())];
    assert_eq!(run(&env, &["spaces"], ""), "");
    server.terminate();

    // Another run gets another secret.
    let other = Server::start(None, dir.path());
    let (_, printed) = other.wait_listening();
    assert!(!printed.iter().any(|line| line.strip_prefix("STREAMKIT_JWT_SECRET=") == Some(secret)));
}

#[test]
fn refused_token_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(Some("right"), dir.path());
    let (url, _) = server.wait_listening();
    let token = run(&[("STREAMKIT_JWT_SECRET", "wrong")], &["token"], "");
    let output = Command::new(BIN)
        .args([
            "spaces",
            "--url",
            &url,
            "--token",
            token.trim(),
            "--store",
            &uuid::Uuid::new_v4().to_string(),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("error: 401 unauthorized"));
}

/// `tail --segment` prints what is there (with `--from-start`), then each new entry as it is committed.
/// `tail` of a segment (`--segment`) and of a whole space: what is there with `--from-start`, then what
/// comes.
#[test]
fn tail_follows_a_segment_and_a_space() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "cli-tail-secret";
    let mut server = Server::start(Some(secret), &dir.path().join("data"));
    let (url, _) = server.wait_listening();
    let (token, store) = (admin_token_of(secret), uuid::Uuid::new_v4().to_string());
    let env = client_env(&url, &token, &store);
    run(&env, &["produce", "--space", "sp", "--segment", "sg"], "one\n");
    let tail = |args: &[&str]| {
        let mut tail = Command::new(BIN)
            .args(["tail", "--space", "sp", "--from-start"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = stdout_lines(&mut tail);
        (tail, lines)
    };
    let (mut segment_tail, segment_lines) = tail(&["--segment", "sg"]);
    let (mut space_tail, space_lines) = tail(&[]);
    let next = |lines: &mpsc::Receiver<String>| {
        lines.recv_timeout(Duration::from_secs(20)).expect("a line from tail")
    };
    assert_eq!(next(&segment_lines), "sp/sg:1\tone");
    assert_eq!(next(&space_lines), "sp/sg:1\tone");
    run(&env, &["produce", "--space", "sp", "--segment", "sg"], "two\nthree\n");
    assert_eq!(next(&segment_lines), "sp/sg:2\ttwo");
    assert_eq!(next(&segment_lines), "sp/sg:3\tthree");
    assert_eq!(next(&space_lines), "sp/sg:2\ttwo");
    assert_eq!(next(&space_lines), "sp/sg:3\tthree");
    // Another segment of the space: only the space tail sees it.
    run(&env, &["produce", "--space", "sp", "--segment", "other"], "four\n");
    assert_eq!(next(&space_lines), "sp/other:1\tfour");
    for tail in [&mut segment_tail, &mut space_tail] {
        let _ = tail.kill();
        let _ = tail.wait();
    }
    assert!(server.terminate().success());
}

#[test]
fn serve_checks_tokens_against_a_jwks_file_by_kid() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let oct = |kid: &str, secret: &str| {
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        serde_json::json!({ "kty": "oct", "alg": "HS256", "kid": kid, "k": k })
    };
    let document = serde_json::json!({ "keys": [oct("k1", "first secret"), oct("k2", "second secret")] });
    std::fs::write(&jwks, serde_json::to_vec(&document).unwrap()).unwrap();
    let mut server =
        Server::start_with(None, &dir.path().join("data"), &["--jwks".as_ref(), jwks.as_os_str()]);
    let (url, before) = server.wait_listening();
    assert!(!before.iter().any(|line| line.contains("STREAMKIT_JWT_SECRET")), "{before:?}");
    let token = run(
        &[("STREAMKIT_JWT_SECRET", "second secret")],
        &["token", "--kid", "k2", "--scope", "streamkit::*", "--ttl", "5m"],
        "",
    );
    let store = uuid::Uuid::new_v4().to_string();
    let env = client_env(&url, token.trim(), &store);
    run(&env, &["produce", "--space", "s", "--segment", "g"], "one\ntwo\n");
    assert_eq!(run(&env, &["consume", "--space", "s", "--segment", "g"], "").lines().count(), 2);
    // The same secret without a kid names no key of a two-key set: refused.
    let anonymous = admin_token_of("second secret");
    let refused =
        Command::new(BIN).args(["spaces"]).envs(client_env(&url, &anonymous, &store)).output().unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    server.terminate();
}

/// `streamkit verify` on the data directory of a stopped server: intact stores pass, a store with a
/// deleted entry is reported with what is wrong, and the exit status says so.
#[test]
fn verify_reports_intact_and_damaged_stores() {
    use streamkit::core::storage::{OrderedKv, WriteBatch, keys};
    use streamkit::store::{DATABASE_FILE, RedbKv, RedbOptions};

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let secret = "cli-verify-secret";
    let mut server = Server::start(Some(secret), &data);
    let (url, _) = server.wait_listening();
    let token = admin_token_of(secret);
    let (good, bad) = (uuid::Uuid::new_v4().to_string(), uuid::Uuid::new_v4().to_string());
    for store in [&good, &bad] {
        run(
            &client_env(&url, &token, store),
            &["produce", "--space", "sp", "--segment", "sg"],
            "one\ntwo\nthree\n",
        );
    }
    assert!(server.terminate().success());

    let verify = || Command::new(BIN).args(["verify", "--data"]).arg(&data).output().unwrap();
    let intact = verify();
    let report = String::from_utf8_lossy(&intact.stdout).into_owned();
    assert!(intact.status.success(), "{report}");
    assert!(report.contains(&format!("{good}: ok (1 spaces, 1 segments, 3 entries)")), "{report}");

    // Damage one store: its second entry disappears from the segment (its space-index copy stays).
    let file = data.join(&bad).join(DATABASE_FILE);
    let mut kv = RedbKv::open(&file, &RedbOptions::default()).unwrap();
    let delete = WriteBatch { deletes: vec![keys::segment_entry("sp", "sg", 2)], ..WriteBatch::default() };
    kv.commit(&[delete]).unwrap();
    drop(kv);
    let damaged = verify();
    let report = String::from_utf8_lossy(&damaged.stdout).into_owned();
    assert!(!damaged.status.success(), "{report}");
    assert!(report.contains(&format!("{good}: ok")), "{report}");
    assert!(report.contains(&format!("{bad}: DAMAGED")), "{report}");
    assert!(report.contains("sp/sg: sequence 2 missing (next is 3)"), "{report}");
    assert!(report.contains("space-index key for sg:2, which is not in the segment"), "{report}");
}
