//! Damaged or unusable database files give [`KvError`]s, never a panic that escapes the store, and
//! their texts (which clients read) name the failure but not the file.

use std::fs;
use std::path::Path;

use streamkit::store::{RedbKv, RedbOptions, StoreFactory};
use streamkit_proto::storage::{KvError, OrderedKv, ScanRange, WriteBatch};
use uuid::Uuid;

fn everything() -> ScanRange {
    ScanRange::new(Vec::new(), vec![0xff; 8], usize::MAX)
}

/// A closed database holding enough data to span many pages.
fn write_database(path: &Path) {
    let mut kv = RedbKv::open(path, &RedbOptions::default()).unwrap();
    let batches: Vec<WriteBatch> = (0..2000u32)
        .map(|i| WriteBatch {
            puts: vec![(i.to_be_bytes().to_vec(), vec![i as u8; 200])],
            ..WriteBatch::default()
        })
        .collect();
    kv.commit(&batches).unwrap();
}

fn open_error(path: &Path, options: &RedbOptions) -> KvError {
    let err = RedbKv::open(path, options).unwrap_err();
    // Clients read this text: it names the failure, never the server's paths.
    assert!(err.0.starts_with("storage open failed: "), "{err}");
    let dir = path.parent().unwrap_or(path).display().to_string();
    assert!(!err.0.contains(&dir) && !err.0.contains(".redb"), "the error names no path: {err}");
    err
}

#[test]
fn a_file_that_is_not_a_database_does_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.redb");
    fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
    open_error(&path, &RedbOptions::default());
    // A short file too (shorter than redb's header).
    fs::write(&path, b"not redb").unwrap();
    open_error(&path, &RedbOptions::default());
}

#[test]
fn a_directory_in_place_of_the_file_does_not_open() {
    let dir = tempfile::tempdir().unwrap();
    open_error(dir.path(), &RedbOptions::default());
}

#[test]
fn a_truncated_database_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("truncated.redb");
    write_database(&path);
    let len = fs::metadata(&path).unwrap().len();
    fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len / 3).unwrap();
    // redb may refuse the file or open it and fail on the missing pages: either way, errors only.
    if let Ok(kv) = RedbKv::open(&path, &RedbOptions::default()) {
        let _ = kv.scan(&everything());
        let _ = kv.get(&7u32.to_be_bytes());
    }
}

#[test]
fn corrupted_pages_are_reported_by_the_integrity_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corrupted.redb");
    write_database(&path);
    let mut bytes = fs::read(&path).unwrap();
    // Keep the header (the first pages) and damage the data pages behind it.
    let len = bytes.len();
    for byte in &mut bytes[len / 4..len / 2] {
        *byte ^= 0xa5;
    }
    fs::write(&path, &bytes).unwrap();

    let verified = RedbOptions { verify_on_open: true, ..RedbOptions::default() };
    open_error(&path, &verified);

    // Without the check the file is trusted: whatever redb makes of it must come back as values or
    // errors, and a panic inside redb disables the handle instead of unwinding into the caller.
    if let Ok(mut kv) = RedbKv::open(&path, &RedbOptions::default()) {
        let _ = kv.scan(&everything());
        for i in (0..2000u32).step_by(97) {
            let _ = kv.get(&i.to_be_bytes());
        }
        let _ =
            kv.commit(&[WriteBatch { puts: vec![(b"k".to_vec(), b"v".to_vec())], ..WriteBatch::default() }]);
    }
}

#[test]
fn the_factory_reports_an_unopenable_store() {
    let dir = tempfile::tempdir().unwrap();
    let factory = StoreFactory::embedded(dir.path(), RedbOptions::default());
    let store_id = Uuid::from_u128(7);
    let path = factory.store_path(&store_id).unwrap();
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, vec![0xff; 4096]).unwrap();
    let err = factory.open(&store_id).unwrap_err();
    assert!(err.0.starts_with("storage open failed: "), "{err}");
    assert!(!err.0.contains(&dir.path().display().to_string()), "{err}");
}
