//! A hostile HTTP/2 client for measuring what `depotfs serve` holds for downloads whose
//! clients stop reading: `CONNS` cleartext HTTP/2 connections, each with `STREAMS` downloads
//! of `URL` whose bodies are not read (the client's window fills and the server can send no
//! more), held for `HOLD` seconds; then the first `READ` bytes of every body are read (all
//! of it without `READ`) and their length and blake3 printed, so what the server sent after
//! holding them can be checked too.
//!
//! ```text
//! cargo run --release -p depotfs-publisher --example h2_stall -- URL CONNS STREAMS HOLD [READ]
//! ```
//!
//! Measure the server's memory meanwhile (`VmRSS`/`VmHWM` in `/proc/PID/status`). Used by
//! benches/RESULTS.md ("serve under stalled HTTP/2 streams").

use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (url, conns, streams, hold, read) = match args.as_slice() {
        [u, c, s, h] => (u, c, s, h, u64::MAX),
        [u, c, s, h, r] => (u, c, s, h, r.parse()?),
        _ => anyhow::bail!("usage: h2_stall URL CONNS STREAMS HOLD_SECS [READ_BYTES]"),
    };
    let (conns, streams): (usize, usize) = (conns.parse()?, streams.parse()?);
    let hold = Duration::from_secs_f64(hold.parse()?);
    let mut held = Vec::new();
    for _ in 0..conns {
        // One client is one connection: every request of it is a stream of that connection.
        let client = reqwest::Client::builder().http2_prior_knowledge().build()?;
        let mut heads = Vec::new();
        for _ in 0..streams {
            heads.push(tokio::spawn(client.get(url).send()));
        }
        for h in heads {
            held.push(h.await??.error_for_status()?);
        }
    }
    eprintln!(
        "h2_stall: {} downloads open on {conns} connections, not read for {hold:?}",
        held.len()
    );
    tokio::time::sleep(hold).await;
    let t = Instant::now();
    let mut reads = Vec::new();
    for mut r in held {
        reads.push(tokio::spawn(async move {
            let (mut hasher, mut len) = (blake3::Hasher::new(), 0u64);
            while len < read {
                let Some(c) = r.chunk().await? else { break };
                let take = c
                    .len()
                    .min(usize::try_from(read - len).unwrap_or(usize::MAX));
                hasher.update(&c[..take]);
                len += take as u64;
            }
            anyhow::Ok((len, hasher.finalize()))
        }));
    }
    let mut seen = std::collections::BTreeMap::new();
    for r in reads {
        let (len, hash) = r.await??;
        *seen.entry((len, hash.to_hex().to_string())).or_insert(0) += 1;
    }
    for ((len, hash), n) in seen {
        println!("{n} bodies of {len} bytes, blake3 {hash}");
    }
    eprintln!("h2_stall: read every body in {:?}", t.elapsed());
    Ok(())
}
