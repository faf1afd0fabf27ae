//! The daemons' limit on open files: both raise their soft limit to the
//! hard one, log it, and serve what it allows. A test binary of its own: it lowers this process's
//! soft limit (which its children inherit), which no other test must see.
#![allow(clippy::unwrap_used, reason = "a test fails loudest by unwrapping")]

#[allow(
    dead_code,
    unused_imports,
    reason = "the helpers are shared by several test files"
)]
mod common;

use std::time::Duration;

use common::{Gateway, Pki, Supervisor, start_job};
use jobworker_proto::v1;

/// Started with systemd's default limits (soft 1024, the hard one above),
/// both daemons raise their soft limit to the hard one, log the figure, and
/// serve 1,000 concurrent output streams (each a client stream and a
/// supervisor connection: more files than the soft limit allows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_with_systemds_default_limits_both_daemons_serve_1000_streams() {
    const STREAMS: usize = 1000;
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        hard > 4 * 1024,
        "the test needs a hard limit on open files above 4096, not {hard}"
    );
    // Children inherit the soft limit.
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 1024, hard).unwrap();
    let pki = Pki::new();
    let supervisor = Supervisor::start();
    let gateway = Gateway::start(
        &pki,
        &supervisor.socket,
        "max_output_streams = 1000\nmax_output_streams_per_user = 1000\n",
    );
    let gateway_log = gateway.log_text();
    assert!(
        gateway_log.contains("open files limit") && gateway_log.contains(&format!("limit={hard}")),
        "{gateway_log}"
    );
    let supervisor_log = supervisor.log_text();
    assert!(
        supervisor_log.contains("raised the open files limit")
            && supervisor_log.contains(&format!("to={hard}")),
        "{supervisor_log}"
    );

    let mut alice = gateway.client(&pki, "alice").await;
    let job = start_job(&mut alice, "sh", &["-c", "echo hi; sleep 600"]).await;
    // 250 streams per connection (the gateway's max_concurrent_streams is 256).
    let mut channels = Vec::new();
    for _ in 0..STREAMS.div_ceil(250) {
        channels.push(gateway.client(&pki, "alice").await);
    }
    let (first_bytes, first_bytes_seen) = tokio::sync::mpsc::channel(STREAMS);
    let streams: Vec<_> = (0..STREAMS)
        .map(|i| {
            let mut client = channels[i % channels.len()].clone();
            let job = job.clone();
            let first_bytes = first_bytes.clone();
            tokio::spawn(async move {
                let mut stream = client
                    .stream_output(v1::StreamOutputRequest {
                        job_id: job,
                        offset: 0,
                        follow: Some(true),
                    })
                    .await?
                    .into_inner();
                let mut told = false;
                while let Some(chunk) = stream.message().await? {
                    match chunk.kind {
                        Some(v1::output_chunk::Kind::Output(output)) if !told => {
                            assert_eq!(output.data, &b"hi\n"[..]);
                            told = true;
                            let _ = first_bytes.send(()).await;
                        }
                        Some(v1::output_chunk::Kind::End(end)) => return Ok(end),
                        _ => {}
                    }
                }
                Err(tonic::Status::internal(
                    "the stream ended without the job's status",
                ))
            })
        })
        .collect();
    drop(first_bytes);
    let mut first_bytes_seen = first_bytes_seen;
    for n in 0..STREAMS {
        tokio::time::timeout(Duration::from_secs(60), first_bytes_seen.recv())
            .await
            .unwrap_or_else(|_| panic!("only {n} of {STREAMS} streams got the job's output"))
            .expect("a stream task ended early");
    }
    // All 1,000 are open at once; the job's end reaches every one.
    alice
        .stop_job(v1::StopJobRequest {
            job_id: job,
            grace_period: None,
        })
        .await
        .unwrap();
    for stream in streams {
        let end = stream.await.unwrap().unwrap();
        assert_eq!(end.state(), v1::JobState::Stopped);
    }
}
