//! `depotfs sync --metrics-file`: a real sync from nginx's autoindex writes the run's
//! figures in node_exporter's textfile format; a failed run says so and keeps the time of
//! the last success. (`depotfs import --metrics-file` is checked in tests/import.rs against
//! its registry.) Needs nginx (`.ci/run` installs it).

mod cli_run;
mod http_suite;

use std::fs;
use std::path::Path;

use cli_run::{depotfs, fails, ok, ok_stdout, prom_value};
use http_suite::Nginx;

fn value(file: &Path, series: &str) -> f64 {
    let text = fs::read_to_string(file).unwrap();
    prom_value(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

fn sync_series(name: &str) -> String {
    format!("{name}{{command=\"sync\"}}")
}

fn items(outcome: &str) -> String {
    format!("depotfs_batch_items{{command=\"sync\",outcome=\"{outcome}\"}}")
}

#[test]
fn sync_writes_its_metrics_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let depot = d.join("depot");
    fs::create_dir_all(&depot).unwrap();
    let files = [
        (
            "bwa:0.7.17--h5bf99c6_8",
            http_suite::random_bytes(300_000, 1),
        ),
        (
            "samtools:1.9--h91753b0_8",
            http_suite::random_bytes(2_000_000, 2),
        ),
        ("tiny:1--0", b"tiny image\n".to_vec()),
    ];
    for (n, b) in &files {
        fs::write(depot.join(n), b).unwrap();
    }
    let r = depot.display();
    let ngx = Nginx::start_site(d, |port| {
        format!(
            "server {{\n listen 127.0.0.1:{port};\n location /depot/ {{ alias {r}/; autoindex on; }}\n}}\n"
        )
    })
    .expect("nginx is needed for this test");
    let url = format!("http://{}/depot/", ngx.addr);
    let store = d.join("store");
    ok(depotfs(&[
        "init".as_ref(),
        store.as_os_str(),
        "--name".as_ref(),
        "m".as_ref(),
    ]));
    let prom = d.join("textfile/depotfs-sync.prom");
    fs::create_dir_all(prom.parent().unwrap()).unwrap();
    let sync = |url: &str| {
        depotfs(&[
            "sync".as_ref(),
            store.as_os_str(),
            url.as_ref(),
            "--to".as_ref(),
            "all/".as_ref(),
            "--metrics-file".as_ref(),
            prom.as_os_str(),
        ])
    };
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let out = ok_stdout(sync(&url));
    assert!(out.contains("3 fetched"), "{out}");
    let total: usize = files.iter().map(|f| f.1.len()).sum();
    assert_eq!(value(&prom, &items("fetched")), 3.0);
    assert_eq!(value(&prom, &items("failed")), 0.0);
    assert_eq!(value(&prom, &items("replaced")), 0.0);
    assert_eq!(
        value(&prom, &sync_series("depotfs_batch_downloaded_bytes")),
        total as f64
    );
    // Random bytes do not compress: the new objects are the files plus a few bytes each,
    // and the directory objects of the publish.
    let objects = du(&store.join("public/objects"));
    let stored = value(&prom, &sync_series("depotfs_batch_stored_bytes"));
    assert!(
        stored >= total as f64 && stored <= objects as f64,
        "stored {stored}, files {total}, objects on disk {objects}"
    );
    assert_eq!(value(&prom, &sync_series("depotfs_batch_exit_status")), 0.0);
    let success = value(
        &prom,
        &sync_series("depotfs_batch_last_success_timestamp_seconds"),
    );
    assert!(success >= started.floor(), "{success} {started}");
    assert!(value(&prom, &sync_series("depotfs_batch_duration_seconds")) > 0.0);
    let text = fs::read_to_string(&prom).unwrap();
    assert!(text.contains("# TYPE depotfs_batch_items gauge"), "{text}");
    assert!(!text.contains("layers_reused"), "{text}");

    // One file changed upstream: replaced, the others unchanged.
    fs::write(depot.join("tiny:1--0"), b"tiny image, rebuilt\n").unwrap();
    ok(sync(&url));
    assert_eq!(value(&prom, &items("fetched")), 0.0);
    assert_eq!(value(&prom, &items("replaced")), 1.0);
    assert_eq!(value(&prom, &items("unchanged")), 2.0);
    assert_eq!(
        value(&prom, &sync_series("depotfs_batch_downloaded_bytes")),
        20.0
    );

    // The depot gone: the run fails, the file says so and keeps the last success.
    let last = value(
        &prom,
        &sync_series("depotfs_batch_last_success_timestamp_seconds"),
    );
    drop(ngx);
    let err = fails(sync(&url));
    assert!(err.contains("listing"), "{err}");
    assert_eq!(value(&prom, &sync_series("depotfs_batch_exit_status")), 1.0);
    assert_eq!(
        value(
            &prom,
            &sync_series("depotfs_batch_last_success_timestamp_seconds")
        ),
        last
    );
    assert!(
        value(
            &prom,
            &sync_series("depotfs_batch_last_run_timestamp_seconds")
        ) >= last,
    );
    assert_eq!(
        fs::read_dir(prom.parent().unwrap()).unwrap().count(),
        1,
        "no temporary file left"
    );
}

fn du(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let md = e.metadata().unwrap();
                    if md.is_dir() { du(&e.path()) } else { md.len() }
                })
                .sum()
        })
        .unwrap_or(0)
}
