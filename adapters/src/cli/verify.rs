//! `streamkit verify --data DIR`: the integrity check of every embedded store of a stopped server
//! (`streamkit_proto::storage::verify`), one report per store, exit status 1 on any damage.

use std::path::{Path, PathBuf};

use clap::Args;
use uuid::Uuid;

use super::CliError;
use crate::core::storage::verify::{StoreReport, verify_store};
use crate::store::{DATABASE_FILE, RedbKv, RedbOptions};

#[derive(Args, Debug)]
pub(super) struct VerifyArgs {
    /// The data directory of a **stopped** server (`serve --data`): one sub-directory per store.
    #[arg(long, env = "STREAMKIT_DATA", default_value = "./data")]
    data: PathBuf,
}

/// Checks every store under `--data`; an error (exit status 1) when a store is damaged or cannot be
/// opened.
pub(super) fn verify(args: VerifyArgs) -> Result<(), CliError> {
    let stores = store_files(&args.data)?;
    if stores.is_empty() {
        println!("no stores under {}", args.data.display());
        return Ok(());
    }
    let mut damaged = 0;
    for (store, file) in &stores {
        match check(file) {
            Ok(report) if report.is_intact() => println!(
                "{store}: ok ({} spaces, {} segments, {} entries)",
                report.spaces, report.segments, report.entries
            ),
            Ok(report) => {
                damaged += 1;
                println!(
                    "{store}: DAMAGED, {} problems ({} spaces, {} segments, {} entries)",
                    report.problem_count, report.spaces, report.segments, report.entries
                );
                for problem in &report.problems {
                    println!("  {problem}");
                }
                if report.problem_count > report.problems.len() as u64 {
                    println!("  … and {} more", report.problem_count - report.problems.len() as u64);
                }
            }
            Err(error) => {
                damaged += 1;
                println!("{store}: CANNOT BE READ: {error}");
            }
        }
    }
    println!("{} stores checked, {damaged} damaged", stores.len());
    if damaged > 0 {
        return Err(format!("{damaged} of {} stores damaged", stores.len()).into());
    }
    Ok(())
}

/// The database file of every store directory under `data`, by store id.
fn store_files(data: &Path) -> Result<Vec<(Uuid, PathBuf)>, CliError> {
    let entries = std::fs::read_dir(data).map_err(|e| format!("cannot read {}: {e}", data.display()))?;
    let mut stores: Vec<(Uuid, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let store = entry.file_name().to_str()?.parse::<Uuid>().ok()?;
            let file = entry.path().join(DATABASE_FILE);
            file.is_file().then_some((store, file))
        })
        .collect();
    stores.sort();
    Ok(stores)
}

fn check(file: &Path) -> Result<StoreReport, CliError> {
    // redb checks its own page checksums on this open too.
    let kv = RedbKv::open(file, &RedbOptions { verify_on_open: true, ..RedbOptions::default() })?;
    Ok(verify_store(&kv)?)
}
