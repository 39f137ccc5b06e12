//! `streamkit serve`'s options for what one client or one store may cost the server: the memory
//! budget of a connection, the request limits and the store quotas.

use clap::Args;
use streamkit_proto::limits::{
    DEFAULT_MAX_CONSUME_SPACES, DEFAULT_MAX_INVENTORY_BYTES, DEFAULT_MAX_METADATA_BYTES,
    DEFAULT_MAX_METADATA_ENTRIES, DEFAULT_MAX_NAME_BYTES, DEFAULT_MAX_WORKER_METADATA_BYTES, RequestLimits,
};
use streamkit_proto::node::quota::StoreQuotas;

use crate::server::ServerConfig;

#[derive(Args, Debug)]
pub(super) struct LimitArgs {
    /// Memory the server may hold for one connection (queued input, input not yet committed, queued
    /// output), e.g. `64MiB`; at least twice the frame limit.
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    connection_memory_budget: u64,
    /// Longest space or segment name, lease key or lease holder, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_NAME_BYTES)]
    max_name_bytes: usize,
    /// Most metadata entries of one record (and of one worker).
    #[arg(long, default_value_t = DEFAULT_MAX_METADATA_ENTRIES)]
    max_metadata_entries: usize,
    /// Most metadata bytes (keys and values) of one record.
    #[arg(long, default_value_t = DEFAULT_MAX_METADATA_BYTES as u64, value_parser = parse_bytes)]
    max_metadata_bytes: u64,
    /// Most metadata bytes a worker registers with.
    #[arg(long, default_value_t = DEFAULT_MAX_WORKER_METADATA_BYTES as u64, value_parser = parse_bytes)]
    max_worker_metadata_bytes: u64,
    /// Most bytes of the workers registered with one store (their metadata, plus 64 each).
    #[arg(long, default_value_t = DEFAULT_MAX_INVENTORY_BYTES as u64, value_parser = parse_bytes)]
    max_inventory_bytes: u64,
    /// Most spaces one `consume` request merges.
    #[arg(long, default_value_t = DEFAULT_MAX_CONSUME_SPACES)]
    max_consume_spaces: usize,
    /// Quota of every store: bytes it may hold (as its backend counts them), e.g. `10GiB`. None by default.
    #[arg(long, env = "STREAMKIT_QUOTA_STORED_BYTES", value_parser = parse_bytes)]
    quota_stored_bytes: Option<u64>,
    /// Quota of every store: records it may be appended per second. None by default.
    #[arg(long, env = "STREAMKIT_QUOTA_RECORDS_PER_SEC", value_parser = clap::value_parser!(u64).range(1..))]
    quota_records_per_sec: Option<u64>,
    /// Quota of every store: payload bytes it may be appended per second, e.g. `10MiB`. None by default.
    #[arg(long, env = "STREAMKIT_QUOTA_BYTES_PER_SEC", value_parser = parse_positive_bytes)]
    quota_bytes_per_sec: Option<u64>,
}

impl LimitArgs {
    /// Puts the options into `config`.
    pub(super) fn apply(&self, config: &mut ServerConfig) {
        let size = |bytes: u64| usize::try_from(bytes).unwrap_or(usize::MAX);
        config.connection_memory_budget = size(self.connection_memory_budget);
        config.node.limits = RequestLimits {
            max_name_bytes: self.max_name_bytes,
            max_metadata_entries: self.max_metadata_entries,
            max_metadata_bytes: size(self.max_metadata_bytes),
            max_worker_metadata_bytes: size(self.max_worker_metadata_bytes),
            max_consume_spaces: self.max_consume_spaces,
            max_inventory_bytes: size(self.max_inventory_bytes),
        };
        config.node.quotas.default = StoreQuotas {
            max_stored_bytes: self.quota_stored_bytes,
            max_records_per_second: self.quota_records_per_sec,
            max_bytes_per_second: self.quota_bytes_per_sec,
        };
    }
}

/// A size: a number of bytes, optionally with a unit (`k`/`KiB` = 1024, `M`/`MiB`, `G`/`GiB`; `KB`,
/// `MB`, `GB` are powers of 1000).
pub(super) fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 =
        number.parse().map_err(|_| format!("expected a size such as 65536 or 64MiB, got {text:?}"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => return Err(format!("unknown size unit {other:?} (use KiB, MiB, GiB, KB, MB or GB)")),
    };
    number.checked_mul(multiplier).ok_or_else(|| format!("size too large: {text:?}"))
}

fn parse_positive_bytes(text: &str) -> Result<u64, String> {
    match parse_bytes(text)? {
        0 => Err("must be at least 1".to_owned()),
        bytes => Ok(bytes),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        limits: LimitArgs,
    }

    #[test]
    fn sizes_take_units() {
        assert_eq!(parse_bytes("65536"), Ok(65_536));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("2 GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("10k"), Ok(10_240));
        assert_eq!(parse_bytes("3MB"), Ok(3_000_000));
        assert!(parse_bytes("MiB").is_err());
        assert!(parse_bytes("1 parsec").unwrap_err().contains("unknown size unit"));
        assert!(parse_bytes("99999999999999GiB").unwrap_err().contains("too large"));
    }

    #[test]
    fn options_reach_the_server_configuration() {
        let verifier = crate::auth::JwtVerifier::hs256(b"secret").unwrap();
        let mut config = ServerConfig::memory("127.0.0.1:0".parse().unwrap(), verifier);
        Cli::parse_from(["serve"]).limits.apply(&mut config);
        assert_eq!(config.node.limits, RequestLimits::default());
        assert_eq!(config.connection_memory_budget, 64 << 20);
        assert!(!config.node.quotas.default.is_limited());

        let cli = Cli::parse_from([
            "serve",
            "--connection-memory-budget",
            "32MiB",
            "--max-name-bytes",
            "64",
            "--quota-stored-bytes",
            "1GiB",
            "--quota-records-per-sec",
            "500",
            "--quota-bytes-per-sec",
            "1MiB",
        ]);
        cli.limits.apply(&mut config);
        assert_eq!(config.connection_memory_budget, 32 << 20);
        assert_eq!(config.node.limits.max_name_bytes, 64);
        assert_eq!(
            config.node.quotas.default,
            StoreQuotas {
                max_stored_bytes: Some(1 << 30),
                max_records_per_second: Some(500),
                max_bytes_per_second: Some(1 << 20)
            }
        );
        assert!(Cli::try_parse_from(["serve", "--quota-records-per-sec", "0"]).is_err());
    }
}
