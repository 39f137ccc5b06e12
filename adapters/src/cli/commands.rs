//! The client commands: `produce`, `consume`, `tail`, `peek`, `spaces`, `segments`.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use super::{CliError, ClientArgs};
use crate::client::EntryStream;
use crate::clock::WallClock;
use crate::core::api::{ConsumeSegment, ConsumeSpace, Entry, Record};
use crate::core::wire::Codec;
use crate::runtime::Runtime;

/// Lines read ahead of the producer.
const LINE_QUEUE: usize = 4096;

#[derive(Args, Debug)]
pub(super) struct ProduceArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Space.
    #[arg(long)]
    space: String,
    /// Segment.
    #[arg(long)]
    segment: String,
    /// Records per produce call.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Files to read (one record per line); stdin when none.
    files: Vec<PathBuf>,
}

pub(super) async fn produce(runtime: Arc<dyn Runtime>, args: ProduceArgs) -> Result<(), CliError> {
    let client = args.client.connect(runtime.clone()).await?;
    let store = args.client.store;
    // Lines come from a blocking reader thread through a bounded channel: memory stays bounded.
    let (lines_tx, lines) = async_channel::bounded::<std::io::Result<String>>(LINE_QUEUE);
    let files = args.files.clone();
    std::thread::spawn(move || {
        let send = |line| lines_tx.send_blocking(line).is_ok();
        if files.is_empty() {
            for line in std::io::stdin().lock().lines() {
                if !send(line) {
                    return;
                }
            }
        }
        for path in files {
            let file = match std::fs::File::open(&path) {
                Ok(file) => file,
                Err(e) => {
                    send(Err(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))));
                    return;
                }
            };
            for line in std::io::BufReader::new(file).lines() {
                if !send(line) {
                    return;
                }
            }
        }
    });
    let mut next = client.peek(store, &args.space, &args.segment).await?.sequence + 1;
    let progress = ProgressBar::new_spinner();
    progress.set_style(
        ProgressStyle::with_template("{spinner} {human_pos} records {per_sec} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let batch_size = args.batch.max(1);
    let mut total = 0u64;
    loop {
        let mut batch = Vec::with_capacity(batch_size);
        while batch.len() < batch_size {
            match lines.recv().await {
                Ok(line) => {
                    batch.push(Record::new(next, line?.into_bytes()));
                    next += 1;
                }
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            break;
        }
        let count = batch.len() as u64;
        let mut statuses = client.produce(
            store,
            args.space.clone(),
            args.segment.clone(),
            futures_util::stream::iter(batch),
        );
        while let Some(status) = statuses.next().await {
            let status = status?;
            progress.set_message(format!("last sequence {}", status.last_sequence));
        }
        total += count;
        progress.set_position(total);
    }
    progress.finish_and_clear();
    eprintln!("produced {total} records to {}/{} (last sequence {})", args.space, args.segment, next - 1);
    client.close().await;
    Ok(())
}

#[derive(Args, Debug)]
pub(super) struct ConsumeArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Space.
    #[arg(long)]
    space: String,
    /// Segment; without it the whole space is read in timestamp order.
    #[arg(long)]
    segment: Option<String>,
    /// First sequence (segment only).
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Maximum number of entries (0 = all).
    #[arg(long, default_value_t = 0)]
    limit: u64,
    /// Print entries as JSON lines instead of `space/segment:sequence<TAB>payload`.
    #[arg(long)]
    json: bool,
}

pub(super) async fn consume(runtime: Arc<dyn Runtime>, args: ConsumeArgs) -> Result<(), CliError> {
    let client = args.client.connect(runtime).await?;
    let store = args.client.store;
    let entries = match &args.segment {
        Some(segment) => client.consume_segment(
            store,
            ConsumeSegment {
                space: args.space.clone(),
                segment: segment.clone(),
                min_sequence: args.from,
                limit: args.limit,
                ..Default::default()
            },
        ),
        None => client.consume_space(
            store,
            ConsumeSpace { space: args.space.clone(), limit: args.limit, ..Default::default() },
        ),
    };
    print_entries(entries, args.json).await?;
    client.close().await;
    Ok(())
}

/// Prints a stream of entries; returns the last one.
async fn print_entries(mut entries: EntryStream, json: bool) -> Result<Option<Entry>, CliError> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut last = None;
    while let Some(entry) = entries.next().await {
        let entry = entry?;
        print_entry(&mut out, &entry, json)?;
        last = Some(entry);
    }
    out.flush()?;
    Ok(last)
}

fn print_entry(out: &mut impl Write, entry: &Entry, json: bool) -> Result<(), CliError> {
    if json {
        // Go's JSON: payload in base64, fields in Go's order.
        out.write_all(&Codec::Json.encode_value(entry))?;
        writeln!(out)?;
    } else {
        let payload = String::from_utf8_lossy(entry.payload.as_deref().unwrap_or_default());
        writeln!(out, "{}/{}:{}\t{payload}", entry.space, entry.segment, entry.sequence)?;
    }
    Ok(())
}

#[derive(Args, Debug)]
pub(super) struct TailArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Space.
    #[arg(long)]
    space: String,
    /// Segment; without it every segment of the space is followed.
    #[arg(long)]
    segment: Option<String>,
    /// Print what is already there first, instead of only what arrives from now on.
    #[arg(long)]
    from_start: bool,
    /// Print entries as JSON lines.
    #[arg(long)]
    json: bool,
}

/// Follows a segment or a space: a subscription says when something changed, a consume from the last
/// printed position fetches it. Runs until interrupted or the connection fails.
pub(super) async fn tail(runtime: Arc<dyn Runtime>, args: TailArgs) -> Result<(), CliError> {
    let client = args.client.connect(runtime).await?;
    let store = args.client.store;
    // Both follows read on across lost connections from the last printed entry.
    let mut entries = match &args.segment {
        Some(segment) => {
            let after =
                if args.from_start { 0 } else { client.peek(store, &args.space, segment).await?.sequence };
            client.follow_segment(store, args.space.clone(), segment, after)
        }
        None => {
            // Without --from-start, only entries committed from now on.
            let since =
                if args.from_start { None } else { Some(WallClock::default().now().as_u64() as i64 - 1) };
            client.follow_space(store, ConsumeSpace::new(args.space.clone()).after_timestamp(since))
        }
    };
    let stdout = std::io::stdout();
    while let Some(entry) = entries.next().await {
        let mut out = stdout.lock();
        print_entry(&mut out, &entry?, args.json)?;
        out.flush()?;
    }
    Ok(())
}

#[derive(Args, Debug)]
pub(super) struct PeekArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Space.
    #[arg(long)]
    space: String,
    /// Segment.
    #[arg(long)]
    segment: String,
}

pub(super) async fn peek(runtime: Arc<dyn Runtime>, args: PeekArgs) -> Result<(), CliError> {
    let client = args.client.connect(runtime).await?;
    let entry = client.peek(args.client.store, &args.space, &args.segment).await?;
    println!("{}", String::from_utf8_lossy(&Codec::Json.encode_value(&entry)));
    client.close().await;
    Ok(())
}

#[derive(Args, Debug)]
pub(super) struct SpacesArgs {
    #[command(flatten)]
    client: ClientArgs,
}

pub(super) async fn spaces(runtime: Arc<dyn Runtime>, args: SpacesArgs) -> Result<(), CliError> {
    let client = args.client.connect(runtime).await?;
    let mut names = client.get_spaces(args.client.store);
    while let Some(name) = names.next().await {
        println!("{}", name?);
    }
    client.close().await;
    Ok(())
}

#[derive(Args, Debug)]
pub(super) struct SegmentsArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Space.
    #[arg(long)]
    space: String,
}

pub(super) async fn segments(runtime: Arc<dyn Runtime>, args: SegmentsArgs) -> Result<(), CliError> {
    let client = args.client.connect(runtime).await?;
    let mut names = client.get_segments(args.client.store, args.space);
    while let Some(name) = names.next().await {
        println!("{}", name?);
    }
    client.close().await;
    Ok(())
}
