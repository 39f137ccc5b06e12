//! The `streamkit` command line: `serve`, `token`, client commands (`produce`, `consume`, `tail`,
//! `peek`, `spaces`, `segments`) and `bench`. Runs on tokio.

mod bench;
mod commands;
mod limits;
mod serve;
mod verify;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use uuid::Uuid;

use crate::auth::{JwtAlgorithm, JwtVerifier, TokenClaims, TokenSigner};
use crate::client::Client;
use crate::core::wire::Codec;
use crate::logging::LogFormat;
use crate::runtime::{Runtime, TokioRuntime};

/// Entry point of the `streamkit` binary; returns the process exit code.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = crate::logging::init(cli.log_format) {
        eprintln!("warning: logging is not set up: {e}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let handle: Arc<dyn Runtime> = Arc::new(TokioRuntime::new(runtime.handle().clone()));
    match runtime.block_on(run(cli, handle)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error for the user: printed as `error: <text>`, exit code 1.
pub type CliError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser, Debug)]
#[command(
    name = "streamkit",
    version,
    about = "streamkit event-streaming store: server, tokens, client and benchmark"
)]
struct Cli {
    /// Log lines on stderr: `text` (control characters escaped, long values cut, colours only on a
    /// terminal) or `json` (one object per line). `STREAMKIT_LOG` sets the filter, e.g. `debug`.
    #[arg(long, global = true, env = "STREAMKIT_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a server.
    Serve(Box<serve::ServeArgs>),
    /// Mint a token with the configured secret or private key.
    Token(TokenArgs),
    /// Append lines of stdin (or of files) to a segment, one record per line.
    Produce(commands::ProduceArgs),
    /// Print the entries of a segment or a space.
    Consume(commands::ConsumeArgs),
    /// Follow a segment or a space live.
    Tail(commands::TailArgs),
    /// Print the last entry of a segment.
    Peek(commands::PeekArgs),
    /// List the spaces of a store.
    Spaces(commands::SpacesArgs),
    /// List the segments of a space.
    Segments(commands::SegmentsArgs),
    /// Load generator: produce then consume, print rates and latency percentiles.
    Bench(bench::BenchArgs),
    /// Check every embedded store of a stopped server: entries decode, sequences run 1..N to the
    /// head, the space index agrees; exit status 1 on damage.
    Verify(verify::VerifyArgs),
}

async fn run(cli: Cli, runtime: Arc<dyn Runtime>) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(args) => serve::run(runtime, *args).await,
        Command::Token(args) => token(args),
        Command::Produce(args) => commands::produce(runtime, args).await,
        Command::Consume(args) => commands::consume(runtime, args).await,
        Command::Tail(args) => commands::tail(runtime, args).await,
        Command::Peek(args) => commands::peek(runtime, args).await,
        Command::Spaces(args) => commands::spaces(runtime, args).await,
        Command::Segments(args) => commands::segments(runtime, args).await,
        Command::Bench(args) => bench::run(runtime, args).await,
        Command::Verify(args) => verify::verify(args),
    }
}

/// Asymmetric algorithms for `--jwt-alg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum KeyAlgorithm {
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "ES256")]
    Es256,
}

/// Key options shared by `serve` (verifying) and `token` (signing).
#[derive(Args, Debug, Clone)]
struct KeyArgs {
    /// HS256 shared secret.
    #[arg(long, env = "STREAMKIT_JWT_SECRET", hide_env_values = true, conflicts_with = "jwt_key")]
    jwt_secret: Option<String>,
    /// PEM key file: the public key for `serve`, the private key for `token`.
    #[arg(long = "jwt-key", alias = "jwt-public-key", alias = "jwt-private-key", requires = "jwt_alg")]
    jwt_key: Option<PathBuf>,
    /// Algorithm of `--jwt-key`.
    #[arg(long, value_enum)]
    jwt_alg: Option<KeyAlgorithm>,
}

impl KeyArgs {
    fn verifier(&self) -> Result<Option<JwtVerifier>, CliError> {
        if let Some(secret) = &self.jwt_secret {
            return Ok(Some(JwtVerifier::hs256(secret.as_bytes())?));
        }
        let (Some(path), Some(alg)) = (&self.jwt_key, self.jwt_alg) else { return Ok(None) };
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Ok(Some(match alg {
            KeyAlgorithm::Rs256 => JwtVerifier::rs256_pem(&pem)?,
            KeyAlgorithm::Es256 => JwtVerifier::es256_pem(&pem)?,
        }))
    }

    fn signer(&self) -> Result<TokenSigner, CliError> {
        if let Some(secret) = &self.jwt_secret {
            return Ok(TokenSigner::hs256(secret.as_bytes())?);
        }
        let (Some(path), Some(alg)) = (&self.jwt_key, self.jwt_alg) else {
            return Err(
                "no key: pass --jwt-secret (or set STREAMKIT_JWT_SECRET), or --jwt-key FILE --jwt-alg".into(),
            );
        };
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Ok(match alg {
            KeyAlgorithm::Rs256 => TokenSigner::rs256_pem(&pem)?,
            KeyAlgorithm::Es256 => TokenSigner::es256_pem(&pem)?,
        })
    }
}

#[derive(Args, Debug)]
struct TokenArgs {
    #[command(flatten)]
    key: KeyArgs,
    /// Scopes: `streamkit::*` (every store) or `streamkit::<store uuid>`; repeatable.
    #[arg(long = "scope", default_value = "streamkit::*")]
    scopes: Vec<String>,
    /// Lifetime: seconds, or a number with s, m, h or d.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    ttl: Duration,
    /// Subject claim.
    #[arg(long)]
    subject: Option<String>,
    /// Key id (`kid` header) for a server that checks tokens against a JWKS (`serve --jwks`).
    #[arg(long)]
    kid: Option<String>,
}

fn token(args: TokenArgs) -> Result<(), CliError> {
    let mut signer = args.key.signer()?;
    if let Some(kid) = args.kid {
        signer = signer.with_key_id(kid);
    }
    let mut claims = TokenClaims::new(args.scopes, args.ttl);
    if let Some(subject) = args.subject {
        claims = claims.with_subject(subject);
    }
    println!("{}", signer.sign(&claims)?);
    Ok(())
}

/// `90`, `90s`, `15m`, `1h`, `7d`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: u64 = number.parse().map_err(|_| format!("invalid duration {text:?}"))?;
    let secs = match unit {
        "s" => value,
        "m" => value.saturating_mul(60),
        "h" => value.saturating_mul(3600),
        "d" => value.saturating_mul(86_400),
        "ms" => return Ok(Duration::from_millis(value)),
        _ => return Err(format!("invalid duration unit in {text:?} (use s, m, h or d)")),
    };
    Ok(Duration::from_secs(secs))
}

/// Connection options of the client commands.
#[derive(Args, Debug, Clone)]
struct ClientArgs {
    /// Server address.
    #[arg(long, env = "STREAMKIT_URL", default_value = "ws://127.0.0.1:7070")]
    url: String,
    /// Token (`streamkit token` mints one).
    #[arg(long, env = "STREAMKIT_TOKEN", hide_env_values = true)]
    token: String,
    /// Store UUID.
    #[arg(long, env = "STREAMKIT_STORE")]
    store: Uuid,
    /// Speak CBOR instead of JSON.
    #[arg(long)]
    cbor: bool,
    /// For `wss://`: trust the CA certificates in this PEM file instead of the Mozilla roots.
    #[arg(long, env = "STREAMKIT_TLS_CA")]
    tls_ca: Option<PathBuf>,
}

impl ClientArgs {
    async fn connect(&self, runtime: Arc<dyn Runtime>) -> Result<Client, CliError> {
        let codec = if self.cbor { Codec::Cbor } else { Codec::Json };
        let mut builder = Client::builder().runtime(runtime).token(self.token.clone()).codec(codec);
        if let Some(ca) = &self.tls_ca {
            let config = crate::tls::client_config_trusting(ca).map_err(|e| format!("--tls-ca: {e}"))?;
            builder = builder.tls_config(Arc::new(config));
        }
        Ok(builder.connect(self.url.clone()).await?)
    }
}

/// Random hex bytes from the OS generator (UUID v4 bits).
fn random_hex(bytes: usize) -> String {
    let mut out = String::with_capacity(bytes * 2);
    while out.len() < bytes * 2 {
        out.push_str(&Uuid::new_v4().simple().to_string());
    }
    out.truncate(bytes * 2);
    out
}

/// The algorithm name for messages.
fn algorithm_name(algorithm: JwtAlgorithm) -> &'static str {
    match algorithm {
        JwtAlgorithm::Hs256 => "HS256",
        JwtAlgorithm::Rs256 => "RS256",
        JwtAlgorithm::Es256 => "ES256",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn random_secrets_differ() {
        let a = random_hex(32);
        assert_eq!(a.len(), 64);
        assert_ne!(a, random_hex(32));
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
