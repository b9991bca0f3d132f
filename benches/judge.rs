//! The JSON judge on answers of three sizes: `cargo bench --bench judge` (BENCHMARKS.md,
//! "Sixth session"). Each line: nanoseconds per judgement of `--expect-json /status=done` by
//! `recheck::check::judge::judge`, which builds only what the rule points at, against
//! building the whole `serde_json::Value` and checking the rule on it (what the judge did
//! before). Plain timing loops, medians of 7 rounds: no benchmark framework needed for two
//! numbers per line.

use std::hint::black_box;
use std::time::Instant;

use recheck::check::judge::{ExpectStatus, Expectations, JsonRule, Judgement, judge};
use serde_json::Value;

/// A transcode job's status, as a media API answers it: `renditions` outputs and `events`
/// history entries.
fn job(renditions: usize, events: usize) -> Vec<u8> {
    let outputs: Vec<Value> = (0..renditions)
        .map(|i| {
            serde_json::json!({
                "name": format!("{}p", 240 * (i + 1)),
                "url": format!("https://cdn.example.com/v/8f14e45f/{i}/index.m3u8?sig=ab12cd34ef56"),
                "codec": "avc1.640028", "bitrate": 800_000 * (i + 1), "width": 426 * (i + 1),
                "height": 240 * (i + 1), "duration": 5423.48, "segments": 1085,
                "checksum": "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            })
        })
        .collect();
    let history: Vec<Value> = (0..events)
        .map(|i| {
            serde_json::json!({
                "at": format!("2026-12-07T06:{:02}:{:02}Z", i / 60 % 60, i % 60),
                "state": if i % 7 == 0 { "retrying" } else { "running" },
                "message": format!("segment {i} of 1085 written to the origin bucket"),
                "worker": "transcoder-7f9c4-xk2lp",
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "id": "job-2f1e9c7a", "status": "done", "progress": 100,
        "source": {"url": "s3://ingest/2026/12/07/raw-8f14e45f.mov", "size": 7_340_032_000u64},
        "outputs": outputs, "events": history,
        "labels": {"team": "media", "priority": "normal", "customer": "acme"},
    }))
    .expect("JSON")
}

/// Median nanoseconds per call of `f` over 7 rounds of `n` calls.
fn time(n: u32, mut f: impl FnMut()) -> f64 {
    let mut rounds: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed().as_nanos() as f64 / f64::from(n)
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[3]
}

fn main() {
    let expect = Expectations {
        status: ExpectStatus::default(),
        json: JsonRule::parse_all(&["/status=done"]).expect("rule"),
        ..Expectations::default()
    };
    let bodies = [
        (
            "mock server's answer",
            br#"{"id":"ok-1","status":"done","ok":true}"#.to_vec(),
        ),
        ("job, 3 outputs", job(3, 0)),
        ("job, 6 outputs, 100 events", job(6, 100)),
    ];
    println!(
        "| answer | bytes | judge (parts the rules reach), ns | whole Value + rule, ns | ratio |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, body) in &bodies {
        assert_eq!(judge(200, body, &expect), Judgement::Ok);
        let n = (2_000_000 / body.len().max(100)) as u32;
        let parts = time(n, || {
            black_box(judge(200, black_box(body), &expect));
        });
        let whole = time(n, || {
            let doc: Value = serde_json::from_slice(black_box(body)).expect("JSON");
            black_box(expect.json.iter().all(|r| r.check(&doc).is_ok()));
        });
        println!(
            "| {name} | {} | {parts:.0} | {whole:.0} | {:.2} × |",
            body.len(),
            whole / parts
        );
    }
}
