//! The daemons' limit on open files: both raise their soft limit to the
//! hard one and log it. A test binary of its own: it lowers this process's
//! soft limit (which its children inherit), which no other test must see.
#![allow(clippy::unwrap_used, reason = "a test fails loudest by unwrapping")]

#[allow(
    dead_code,
    unused_imports,
    reason = "the helpers are shared by several test files"
)]
mod common;

use common::{Gateway, Pki, Supervisor, start_job, wait_ended};

/// Both daemons raise their soft limit on open files to the hard one (run
/// under prlimit with systemd's defaults' shape: a soft limit far below the
/// hard) and log the figure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_daemons_raise_their_open_files_limit() {
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        hard > 1024,
        "the test needs a hard limit above 1024, not {hard}"
    );
    // Children inherit the lowered soft limit.
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 256, hard).unwrap();
    let pki = Pki::new();
    let supervisor = Supervisor::start();
    let gateway = Gateway::start(&pki, &supervisor.socket, "");
    let mut alice = gateway.client(&pki, "alice").await;
    let job = start_job(&mut alice, "/bin/true", &[]).await;
    wait_ended(&mut alice, &job).await;
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
}
