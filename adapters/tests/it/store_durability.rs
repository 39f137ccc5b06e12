//! Durability across a real process kill: a child process commits through a [`StoreHandle`] and
//! reports every acknowledged commit on stdout; the parent kills it with SIGKILL mid-stream, reopens
//! the database and checks what survived.
//!
//! A process kill leaves the OS page cache intact, so this proves that an acknowledged commit is in a
//! committed, recoverable redb state (not merely in the writer's memory), not that fsync reached the
//! platter; the latter is redb's `Durability::Immediate` contract, which the store relies on.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use futures_lite::future::block_on;
use streamkit::store::{CommitDurability, RedbKv, RedbOptions, StoreConfig, StoreHandle};
use streamkit_proto::storage::{CommitOutcome, OrderedKv, WriteBatch};

const DB_VAR: &str = "STREAMKIT_TEST_CHILD_DB";
const MODE_VAR: &str = "STREAMKIT_TEST_CHILD_MODE";

/// Not a test: the child side of the tests below, run in a separate process by them.
#[test]
#[ignore = "helper run in a child process by the durability tests"]
fn child_writer() {
    let (Ok(path), Ok(mode)) = (std::env::var(DB_VAR), std::env::var(MODE_VAR)) else {
        return;
    };
    let durability = if mode == "none" { CommitDurability::None } else { CommitDurability::Immediate };
    let kv = RedbKv::open(&path, &RedbOptions { durability, ..RedbOptions::default() }).unwrap();
    let store = StoreHandle::spawn_redb(kv, StoreConfig::default()).unwrap();
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let (store, out, stop) = (store.clone(), Arc::clone(&out), Arc::clone(&stop));
            thread::spawn(move || {
                for i in 0..100_000u32 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("t{t}-{i:06}");
                    let batch = WriteBatch {
                        puts: vec![(key.clone().into_bytes(), key.clone().into_bytes())],
                        ..WriteBatch::default()
                    };
                    assert_eq!(block_on(store.commit_one(batch)), Ok(CommitOutcome::Committed));
                    let mut out = out.lock().unwrap();
                    writeln!(out, "ack {key}").unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    if mode == "none" {
        // Stop writing after a while but stay alive: only the kill may end this process, since a
        // clean close would persist the non-durable commits.
        thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            writer.join().unwrap();
        }
        writeln!(out.lock().unwrap(), "pause").unwrap();
        thread::sleep(Duration::from_secs(60));
        return;
    }
    for writer in writers {
        writer.join().unwrap();
    }
}

fn spawn_child(db: &Path, mode: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["store_durability::child_writer", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(DB_VAR, db)
        .env(MODE_VAR, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Reads the child's acknowledgements until `enough` returns true (or its stdout ends), then kills it.
fn acks_until_killed(mut child: Child, enough: impl Fn(usize, &str) -> bool) -> Vec<String> {
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut acked = Vec::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(key) = line.strip_prefix("ack ") {
            acked.push(key.to_owned());
        }
        if enough(acked.len(), &line) {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    acked
}

#[test]
fn acknowledged_commits_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("streams.redb");
    let acked = acks_until_killed(spawn_child(&db, "immediate"), |acks, _| acks >= 300);
    assert!(acked.len() >= 300, "the child stopped early after {} acks", acked.len());

    // Reopening after the kill runs redb's crash recovery.
    let kv = RedbKv::open(&db, &RedbOptions::default()).unwrap();
    for key in &acked {
        assert_eq!(
            kv.get(key.as_bytes()).unwrap().as_deref(),
            Some(key.as_bytes()),
            "acknowledged {key} lost"
        );
    }
}

#[test]
fn non_durable_commits_are_lost_on_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("streams.redb");
    let acked = acks_until_killed(spawn_child(&db, "none"), |_, line| line == "pause");
    assert!(!acked.is_empty(), "the child acknowledged nothing");

    // This is what CommitDurability::None documents: acknowledged, yet gone after a crash.
    let kv = RedbKv::open(&db, &RedbOptions::default()).unwrap();
    let survivors = acked.iter().filter(|key| kv.get(key.as_bytes()).unwrap().is_some()).count();
    assert_eq!(survivors, 0, "{} acknowledged commits, {survivors} survived", acked.len());
}
