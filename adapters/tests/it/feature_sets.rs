//! The feature sets keep their promises: a client-only build depends on none of the server's or the
//! CLI's crates, and a smol build of client and server (what `examples/smol_embed.rs` uses) contains
//! no tokio (checked with `cargo tree`, which reads the lock file).

use std::process::Command;

/// Crates that belong to the server (storage, JWT verification, metrics), the scale-out backends or
/// the command line; none may appear in a client-only build.
const SERVER_AND_CLI_CRATES: &[&str] = &[
    "redb",
    "jsonwebtoken",
    "prometheus-client",
    "tokio-postgres",
    "deadpool-postgres",
    "async-nats",
    "clap",
    "indicatif",
    "tracing-subscriber",
];

/// The names of the crates in the normal (non-dev, non-build) dependency tree of `streamkit` built
/// with exactly `features`.
fn dependency_names(features: &str) -> Vec<String> {
    let output = Command::new(env!("CARGO"))
        .args(["tree", "--locked", "-p", "streamkit", "-e", "normal", "--prefix", "none"])
        .args(["--no-default-features", "--features", features])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(output.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&output.stderr));
    let mut names: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

fn assert_client_only(features: &str) {
    let names = dependency_names(features);
    assert!(
        names.iter().any(|name| name == "async-tungstenite"),
        "{features}: the tree was not read: {names:?}"
    );
    let server_side: Vec<&String> =
        names.iter().filter(|name| SERVER_AND_CLI_CRATES.contains(&name.as_str())).collect();
    assert!(server_side.is_empty(), "a client-only build ({features}) depends on {server_side:?}");
}

#[test]
fn client_only_builds_depend_on_no_server_or_cli_crate() {
    assert_client_only("tokio,client");
    assert_client_only("smol,client");
    assert_client_only("tokio,client,tls");
}

#[test]
fn the_server_feature_brings_the_server_crates() {
    // The check above would pass vacuously if the crate names were read wrongly.
    let names = dependency_names("tokio,server");
    for expected in ["redb", "jsonwebtoken", "prometheus-client"] {
        assert!(names.iter().any(|name| name == expected), "no {expected} in {names:?}");
    }
}

#[test]
fn a_smol_build_of_client_and_server_contains_no_tokio() {
    let names = dependency_names("smol,client,server");
    assert!(names.iter().any(|name| name == "redb"), "the tree was not read: {names:?}");
    let tokio: Vec<&String> = names.iter().filter(|name| name.starts_with("tokio")).collect();
    assert!(tokio.is_empty(), "the smol build depends on {tokio:?}");
}
