//! Greedy or hostile callers against the real gateway and supervisor: a
//! flood of idle TCP connections, an authenticated connection that never
//! speaks HTTP/2, one reader holding hundreds of streams, one user sending
//! hundreds of stops. Each must leave everyone else served.
#![allow(clippy::unwrap_used, reason = "a test fails loudest by unwrapping")]

#[allow(
    dead_code,
    unused_imports,
    reason = "the helpers are shared by several test files"
)]
mod common;

use std::time::{Duration, Instant};

use common::{Gateway, Pki, Supervisor, get, output, start_job, wait_ended};
use jobworker_proto::v1;
use tokio::io::AsyncReadExt;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_does_not_lock_out_a_client() {
    let pki = Pki::new();
    let supervisor = Supervisor::start();
    let gateway = Gateway::start(&pki, &supervisor.socket, "");
    let mut idle = Vec::new();
    for _ in 0..1100 {
        idle.push(tokio::net::TcpStream::connect(gateway.addr).await.unwrap());
    }
    let began = Instant::now();
    let mut alice = gateway.client(&pki, "alice").await;
    let job = start_job(&mut alice, "/bin/true", &[]).await;
    let info = wait_ended(&mut alice, &job).await;
    assert_eq!(info.exit_code, Some(0));
    eprintln!(
        "with 1,100 idle TCP connections open, a new client connected and ran a job in {:?}",
        began.elapsed()
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_connection_without_http2_is_closed() {
    let pki = Pki::new();
    let supervisor = Supervisor::start();
    let gateway = Gateway::start(&pki, &supervisor.socket, "handshake_timeout_ms = 500\n");
    let mut tls = gateway.tls(&pki, Some("alice")).await.unwrap();
    let began = Instant::now();
    let mut buf = [0; 256];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the silent connection was never closed");
    eprintln!(
        "an authenticated connection that sent nothing was closed after {:?}",
        began.elapsed()
    );
    assert!(
        gateway
            .log_text()
            .contains("sent no HTTP/2 preface in time"),
        "{}",
        gateway.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_with_600_streams_does_not_stop_alices() {
    let pki = Pki::new();
    let supervisor = Supervisor::start();
    let gateway = Gateway::start(&pki, &supervisor.socket, "");
    let mut alice = gateway.client(&pki, "alice").await;
    let sleeper = start_job(&mut alice, "/bin/sleep", &["60"]).await;
    let mut channels = Vec::new();
    for _ in 0..3 {
        channels.push(gateway.client(&pki, "rita").await);
    }
    let attempts = (0..600).map(|i| {
        let mut rita = channels[i % channels.len()].clone();
        let job = sleeper.clone();
        tokio::spawn(async move {
            rita.stream_output(v1::StreamOutputRequest {
                job_id: job,
                offset: 0,
                follow: Some(true),
            })
            .await
        })
    });
    let results = futures::future::join_all(attempts).await;
    let mut open = Vec::new();
    let mut refused = 0;
    for result in results {
        match result.unwrap() {
            Ok(stream) => open.push(stream),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    status
                        .message()
                        .contains("rita has 128 output streams open"),
                    "{}",
                    status.message()
                );
                refused += 1;
            }
        }
    }
    assert_eq!((open.len(), refused), (128, 472));
    // Alice's own stream is served all the same.
    let printer = start_job(&mut alice, "/bin/echo", &["hi"]).await;
    let (bytes, end) = output(&mut alice, &printer).await.unwrap();
    assert_eq!(bytes, b"hi\n");
    assert_eq!(end.state(), v1::JobState::Finished);
    drop(open);
    alice
        .stop_job(v1::StopJobRequest {
            job_id: sleeper,
            grace_period: None,
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_list_is_answered_while_300_stops_wait_out_their_grace() {
    let pki = Pki::new();
    let supervisor = Supervisor::start();
    let gateway = Gateway::start(&pki, &supervisor.socket, "");
    let mut alice = gateway.client(&pki, "alice").await;
    let mut bob = gateway.client(&pki, "bob").await;
    // Its processes ignore SIGTERM: each stop waits out the grace period.
    let stubborn = start_job(&mut alice, "sh", &["-c", "trap '' TERM; sleep 600"]).await;
    let mut channels = Vec::new();
    for _ in 0..2 {
        channels.push(gateway.client(&pki, "alice").await);
    }
    let began = Instant::now();
    let stops: Vec<_> = (0..300)
        .map(|i| {
            let mut alice = channels[i % channels.len()].clone();
            let job = stubborn.clone();
            tokio::spawn(async move {
                alice
                    .stop_job(v1::StopJobRequest {
                        job_id: job,
                        grace_period: Some(prost_types::Duration {
                            seconds: 3,
                            nanos: 0,
                        }),
                    })
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    let listed = bob
        .list_jobs(v1::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let took = asked.elapsed();
    assert!(listed.jobs.is_empty(), "bob sees only his own jobs");
    let bobs = start_job(&mut bob, "/bin/true", &[]).await;
    get(&mut bob, &bobs).await.unwrap();
    eprintln!("bob's ListJobs took {took:?} while 300 StopJobs waited out a 3 s grace period");
    for stop in stops {
        let job = stop.await.unwrap().unwrap().into_inner().job.unwrap();
        assert_eq!(job.state(), v1::JobState::Stopped);
    }
    eprintln!("all 300 stops answered after {:?}", began.elapsed());
}
