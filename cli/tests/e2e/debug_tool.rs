//! `jobworker-debug` against a real supervisor, without the gateway.

use std::process::Command;

use crate::common::{CLI_TIMEOUT, DEBUG, LocalTools, run_with_timeout, supervisor};

#[test]
fn ping_reports_the_supervisor() {
    let supervisor = supervisor("daemon");
    let text = supervisor.debug(&["ping"]).ok();
    let version = jobworker_ipc::handshake::PROTOCOL_VERSION;
    assert!(
        text.contains(&format!("protocol version: {version}\n")),
        "{text}"
    );
    assert!(text.contains("caller:           local:root\n"), "{text}");
    let root = supervisor.cgroup_root().display().to_string();
    assert!(text.contains(&root), "{text}");
    assert!(text.contains("controllers:"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&supervisor.debug(&["ping", "--json"]).ok()).unwrap();
    assert_eq!(json["protocol_version"], version);
    assert_eq!(json["caller"], "local:root");
    assert!(json["controllers"].is_array());
}

#[test]
fn lists_shows_streams_and_stops_jobs() {
    let supervisor = supervisor("daemon");
    let printer = supervisor
        .start_local_job("sh", &["-c", "printf 'one\\ntwo\\n'"])
        .to_string();
    let sleeper = supervisor.start_local_job("sleep", &["600"]).to_string();

    // Follow the printer to its end: exactly its bytes.
    let logs = supervisor.debug(&["logs", "-f", &printer]);
    assert_eq!(logs.ok(), "one\ntwo\n");

    let table = supervisor.debug(&["jobs"]).ok();
    assert!(table.starts_with("ID "), "{table}");
    assert!(
        table.contains(&printer) && table.contains(&sleeper),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&supervisor.debug(&["jobs", "--json"]).ok()).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    let running: serde_json::Value = serde_json::from_str(
        &supervisor
            .debug(&["jobs", "--json", "--state", "running"])
            .ok(),
    )
    .unwrap();
    assert_eq!(running.as_array().unwrap().len(), 1);
    assert_eq!(running[0]["id"], sleeper.as_str());

    // A prefix is enough.
    let status = supervisor.debug(&["job", &sleeper[..8]]).ok();
    assert!(
        status.contains(&format!("Job:         {sleeper}")),
        "{status}"
    );
    assert!(status.contains("Owner:       local:root"), "{status}");
    assert!(status.contains("State:       RUNNING"), "{status}");

    let stopped = supervisor.debug(&["stop", "--grace", "1s", &sleeper]).ok();
    assert!(
        stopped.starts_with(&format!("{sleeper}: STOPPED")),
        "{stopped}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&supervisor.debug(&["job", "--json", &sleeper]).ok()).unwrap();
    assert_eq!(json["state"], "stopped");

    // The supervisor's figures: both starts, one end of each kind.
    let metrics: serde_json::Value =
        serde_json::from_str(&supervisor.debug(&["metrics"]).ok()).unwrap();
    assert_eq!(metrics["jobs_started"], 2, "{metrics}");
    assert_eq!(metrics["jobs_running"], 0, "{metrics}");
    let ended = metrics["jobs_ended"].as_array().unwrap();
    let count = |state: &str, reason: &str| {
        ended
            .iter()
            .find(|c| c["state"] == state && c["reason"] == reason)
            .map(|c| c["count"].clone())
    };
    assert_eq!(count("Finished", "ExitZero"), Some(1.into()), "{metrics}");
    assert_eq!(count("Stopped", "StopRequest"), Some(1.into()), "{metrics}");
    assert_eq!(metrics["output_bytes"], 8, "{metrics}");
}

#[test]
fn frames_traces_every_frame() {
    let supervisor = supervisor("daemon");
    let ping = supervisor.debug(&["--frames", "ping"]);
    ping.ok();
    let lines: Vec<&str> = ping.stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{}", ping.stderr);
    let hello = format!(
        "8 bytes hello: magic \"JOBWKR\", version {}",
        jobworker_ipc::handshake::PROTOCOL_VERSION
    );
    assert_eq!(lines[0], format!("-> {hello}"));
    assert_eq!(lines[1], format!("<- {hello}"));
    assert!(
        lines[2].starts_with("-> ")
            && lines[2].contains("Call { on_behalf_of: None, request: Ping }"),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].starts_with("<- ") && lines[3].contains("Pong(ServerInfo {"),
        "{}",
        lines[3]
    );

    // Output data is shown as a size and a short preview, not in full.
    let big = supervisor
        .start_local_job("head", &["-c", "200000", "/dev/zero"])
        .to_string();
    let logs = supervisor.debug(&["--frames", "logs", "-f", &big]);
    logs.ok();
    assert_eq!(
        logs.stdout,
        vec![0; 200_000],
        "the bytes go to stdout, exactly"
    );
    // (How the supervisor cuts the output into frames depends on timing.)
    let first = logs
        .stderr
        .lines()
        .find(|line| line.contains("Output { offset: 0, data: "))
        .unwrap_or_else(|| panic!("no first output frame:\n{}", logs.stderr));
    assert!(
        first.contains(" bytes \"\\x00\\x00") && first.ends_with("\"… }"),
        "{first}"
    );
    assert!(logs.stderr.contains("End(JobInfo {"), "{}", logs.stderr);
    assert!(logs.stderr.lines().all(|line| line.len() < 2500));
}

#[test]
fn unknown_jobs_are_not_found() {
    let supervisor = supervisor("daemon");
    let absent = supervisor.debug(&["job", "6f1c2d3e-4f50-4617-8a9b-0c1d2e3f4a5b"]);
    assert_eq!(absent.code(), 5, "{absent:?}");
    assert!(
        absent
            .one_line_error()
            .starts_with("jobworker-debug: getting job 6f1c2d3e")
    );
    let prefix = supervisor.debug(&["logs", "abc"]);
    assert_eq!(prefix.code(), 5, "{prefix:?}");
    assert!(prefix.one_line_error().contains("no job matches \"abc\""));
    let bad = supervisor.debug(&["job", "not-hex"]);
    assert_eq!(bad.code(), 2, "{bad:?}");
    bad.one_line_error();
}

#[test]
fn a_missing_socket_is_a_connection_error() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    let outcome = run_with_timeout(
        Command::new(DEBUG).arg("--socket").arg(&socket).arg("ping"),
        CLI_TIMEOUT,
    );
    assert_eq!(outcome.code(), 3, "{outcome:?}");
    let line = outcome.one_line_error();
    assert!(line.contains("is jobworker-supervisor running?"), "{line}");
    // The environment names the socket too.
    let outcome = run_with_timeout(
        Command::new(DEBUG)
            .env("JOBWORKER_SOCKET", &socket)
            .arg("jobs"),
        CLI_TIMEOUT,
    );
    assert_eq!(outcome.code(), 3, "{outcome:?}");
    assert!(
        outcome
            .one_line_error()
            .contains(&socket.display().to_string())
    );
}

#[test]
fn other_users_are_refused() {
    // nobody is neither root, the gateway (daemon here), nor an operator;
    // the socket's group is nogroup, so its connect() succeeds and the
    // supervisor's peer-credential check refuses it.
    let supervisor = supervisor("daemon");
    let outcome = run_with_timeout(
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", DEBUG])
            .arg("--socket")
            .arg(&supervisor.socket)
            .arg("ping"),
        CLI_TIMEOUT,
    );
    assert_eq!(outcome.code(), 4, "{outcome:?}");
    assert_eq!(
        outcome.one_line_error(),
        "jobworker-debug: the supervisor refused this connection: run as root or as a member of the operator group"
    );
}

/// In fleet mode: the fleet's hosts from the database the gateway's
/// `[fleet]` table names, drained and undrained; a drain outlives the
/// host's registrations.
#[test]
fn lists_drains_and_undrains_the_fleets_hosts() {
    let pg = jobworker_tests::fixture::Postgres::start().unwrap();
    let file = jobworker_fleet::FleetFileConfig {
        database_url: pg.url(),
        database_ca: None,
        host_id: "h1".into(),
        slots: 3,
        labels: [("zone".to_owned(), "a".to_owned())].into(),
        lease_ms: 60_000,
        start_wait_ms: 1_000,
        host_lost_ms: 300_000,
        peer_listen: None,
        peer_address: None,
        peer_cert: None,
        peer_key: None,
        peer_ca: None,
    };
    let host = jobworker_fleet::FleetConfig::resolve(&file).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Registers h1 as its gateway's agent does; its generation.
    let register = || {
        runtime.block_on(async {
            let mut client = host.database.connect().await.unwrap();
            jobworker_fleet::schema::migrate(&mut client).await.unwrap();
            jobworker_fleet::hosts::register(&client, &host)
                .await
                .unwrap()
        })
    };
    assert_eq!(register(), 1);

    let dir = tempfile::tempdir().unwrap();
    let gateway_config = dir.path().join("gateway.toml");
    std::fs::write(
        &gateway_config,
        format!(
            "listen = \"127.0.0.1:8443\"\nmax_connections = 10\n\n[fleet]\n\
             database_url = {:?}\nhost_id = \"h1\"\n",
            pg.url()
        ),
    )
    .unwrap();
    let debug = |args: &[&str]| {
        run_with_timeout(
            Command::new(DEBUG)
                .arg("--gateway-config")
                .arg(&gateway_config)
                .args(args),
            CLI_TIMEOUT,
        )
    };
    let draining = |json: &str| -> bool {
        let hosts: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(hosts[0]["id"], "h1", "{json}");
        hosts[0]["draining"].as_bool().unwrap()
    };

    let table = debug(&["hosts"]).ok();
    let line = table.lines().nth(1).unwrap_or_default();
    assert!(table.starts_with("HOST "), "{table}");
    for field in ["h1 ", "held, ", " no ", " 3 ", "zone=a"] {
        assert!(line.contains(field), "{field:?} in {table}");
    }
    assert!(!draining(&debug(&["hosts", "--json"]).ok()));

    assert!(debug(&["drain", "h1"]).ok().starts_with("drained h1"));
    assert!(draining(&debug(&["hosts", "--json"]).ok()));
    assert_eq!(register(), 2, "the host registers again");
    let json = debug(&["hosts", "--json"]).ok();
    assert!(draining(&json), "the drain outlives a registration: {json}");
    assert!(debug(&["undrain", "h1"]).ok().starts_with("undrained h1"));
    assert!(!draining(&debug(&["hosts", "--json"]).ok()));

    let unknown = debug(&["drain", "h9"]);
    assert_eq!(unknown.code(), 5, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("no host \"h9\""),
        "{}",
        unknown.stderr
    );

    std::fs::write(&gateway_config, "listen = \"127.0.0.1:8443\"\n").unwrap();
    let single = debug(&["hosts"]);
    assert_eq!(single.code(), 2, "{}", single.stderr);
    assert!(
        single.stderr.contains("no [fleet] table"),
        "{}",
        single.stderr
    );

    std::fs::write(
        &gateway_config,
        format!("[fleet]\ndatabase_url = {:?}\nhost_id = \"h1\"\n", pg.url()),
    )
    .unwrap();
    pg.stop().unwrap();
    let down = debug(&["hosts"]);
    assert_eq!(down.code(), 3, "{}", down.stderr);
    assert!(down.stderr.contains("is PostgreSQL up"), "{}", down.stderr);
}
