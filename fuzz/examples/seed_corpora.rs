//! Writes the seed corpora of the fuzz targets, derived from the captured Go frames, to
//! `fuzz/corpus/<target>/` (ignored by git): `cargo run --example seed_corpora` from `fuzz/`.

use std::fs;
use std::path::Path;

use streamkit_core::wire::fuzzing::{TARGETS, seed_corpus};

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for target in TARGETS {
        fs::create_dir_all(root.join(target))?;
    }
    let seeds = seed_corpus();
    for seed in &seeds {
        fs::write(root.join(seed.target).join(&seed.name), &seed.data)?;
    }
    for target in TARGETS {
        let count = seeds.iter().filter(|s| s.target == target).count();
        println!("{target}: {count} seeds in {}", root.join(target).display());
    }
    Ok(())
}
