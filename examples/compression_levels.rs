//! Measures the size and time of each compression level on a cache file, for choosing the
//! levels the snapshot is precompressed at. Run by `bench/compression`.
//!
//!     cargo run --release --example compression_levels -- CACHE_FILE [zstd:3,9,... gzip:6,9]

use std::time::Instant;

use pma_cache::cache::framing::compress_body;
use pma_cache::cache::{Encoding, Snapshot};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: compression_levels CACHE_FILE [zstd:L,L gzip:L,L]");
    let mut plan: Vec<(Encoding, Vec<i32>)> = vec![
        (Encoding::Zstd, vec![3, 9, 12, 15, 17, 19]),
        (Encoding::Gzip, vec![6, 9]),
    ];
    for spec in args {
        let (name, levels) = spec.split_once(':').expect("ENCODING:LEVEL,LEVEL");
        let encoding = if name == "gzip" {
            Encoding::Gzip
        } else {
            Encoding::Zstd
        };
        let levels = levels
            .split(',')
            .map(|l| l.parse().expect("a level"))
            .collect();
        plan.retain(|(e, _)| *e != encoding);
        plan.push((encoding, levels));
    }
    let bytes = std::fs::read(&path)?;
    let mut buf = vec![b' '; pma_cache::cache::format::BODY_ROOM];
    buf.extend_from_slice(&bytes);
    let snapshot = Snapshot::from_cache_buffer(buf)?;
    println!("encoding\tlevel\tbytes\tratio\tseconds");
    println!("identity\t-\t{}\t1.000\t0", snapshot.body.len());
    for (encoding, levels) in plan {
        for level in levels {
            let started = Instant::now();
            let out = compress_body(&snapshot.body, encoding, level)?;
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "{}\t{level}\t{}\t{:.4}\t{seconds:.2}",
                encoding.token(),
                out.len(),
                out.len() as f64 / snapshot.body.len() as f64
            );
        }
    }
    Ok(())
}
