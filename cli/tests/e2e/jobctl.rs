//! `jobctl` through the real gateway to the real supervisor.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::common::{
    CLI_TIMEOUT, Deployment, JOBCTL, LocalTools, run_with_timeout, wait_with_timeout,
};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn run_prints_both_streams_and_exits_with_the_jobs_code() {
    let d = Deployment::start();
    let outcome = d.run(
        "alice",
        &["run", "--", "sh", "-c", "echo out; echo err >&2; exit 7"],
    );
    assert_eq!(outcome.code(), 7, "{outcome:?}");
    assert_eq!(outcome.stdout_text(), "out\nerr\n");
    assert_eq!(outcome.stderr, "");

    // A command killed by a signal: 128 + its number.
    let killed = d.run("alice", &["run", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(killed.code(), 128 + 15, "{killed:?}");
}

#[test]
fn a_time_limit_stops_the_job_and_labels_find_it() {
    let d = Deployment::start();
    let outcome = d.run(
        "alice",
        &[
            "run",
            "--timeout",
            "1s",
            "-l",
            "team=build,env=ci",
            "--",
            "sleep",
            "60",
        ],
    );
    assert_eq!(
        outcome.code(),
        128 + 15,
        "SIGTERM at the deadline: {outcome:?}"
    );
    assert!(
        outcome.stderr.contains("timed out after 1s"),
        "{:?}",
        outcome.stderr
    );
    let other = d.start_job("alice", &["true"]);
    let found = json(
        &d.run("alice", &["list", "--json", "-l", "env=ci,team=build"])
            .ok(),
    );
    let found = found.as_array().unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["stop_reason"], "timed_out");
    assert_eq!(found[0]["timeout_ms"], 1000);
    assert_eq!(found[0]["labels"]["team"], "build");
    assert_ne!(found[0]["id"], other.as_str());
    let id = found[0]["id"].as_str().unwrap();
    let status = d.run("alice", &["status", id]).ok();
    assert!(
        status.contains("State:       STOPPED (timed out after 1s, killed by signal 15, SIGTERM)"),
        "{status}"
    );
    assert!(
        status.contains("Labels:      env=ci,team=build"),
        "{status}"
    );
    let table = d.run("alice", &["list", "-l", "team=build"]).ok();
    assert!(table.contains("STOPPED (timed out)"), "{table}");
    // Checked before anything is sent: the flag and the label are named.
    let bad = d.run("alice", &["list", "-l", "team"]);
    assert_ne!(bad.code(), 0);
    assert!(bad.one_line_error().contains("--label"), "{bad:?}");
}

#[test]
fn logs_of_a_finished_job_are_exact() {
    let d = Deployment::start();
    let id = d.start_job(
        "alice",
        &["sh", "-c", "printf 'a\\000b\\377c\\n'; seq 1 20000"],
    );
    let status = d.wait_ended("alice", &id);
    assert_eq!(status["state"], "finished");
    assert_eq!(status["exit_code"], 0);
    let mut expected = b"a\0b\xffc\n".to_vec();
    for i in 1..=20000 {
        expected.extend_from_slice(format!("{i}\n").as_bytes());
    }
    assert_eq!(status["output_bytes"], expected.len());
    let logs = d.run("alice", &["logs", &id]);
    logs.ok();
    assert!(logs.stdout == expected, "the output differs");
    let from = d.run("alice", &["logs", "--offset", "3", &id[..8]]);
    from.ok();
    assert!(
        from.stdout == expected[3..],
        "the output from offset 3 differs"
    );
}

#[test]
fn three_followers_print_the_same_bytes() {
    let d = Deployment::start();
    let id = d.start_job(
        "alice",
        &[
            "sh",
            "-c",
            "for i in $(seq 1 40); do echo line $i; sleep 0.02; done",
        ],
    );
    let followers: Vec<_> = (0..3)
        .map(|_| {
            d.jobctl("alice")
                .args(["logs", "-f", &id])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let expected: String = (1..=40).map(|i| format!("line {i}\n")).collect();
    for follower in followers {
        let outcome = wait_with_timeout(follower, CLI_TIMEOUT);
        assert_eq!(outcome.ok(), expected);
    }
}

#[test]
fn stop_reports_stopped() {
    let d = Deployment::start();
    let id = d.start_job("alice", &["sleep", "600"]);
    let stopped = d.run("alice", &["stop", "--grace", "1s", &id[..10]]).ok();
    assert!(stopped.starts_with(&format!("{id}: STOPPED")), "{stopped}");
    let status = d.run("alice", &["status", &id]).ok();
    assert!(status.contains("State:       STOPPED"), "{status}");
    // Stopping again is no error.
    let again = json(&d.run("alice", &["stop", "--json", &id]).ok());
    assert_eq!(again["state"], "stopped");
}

#[test]
fn status_list_and_start_speak_json() {
    let d = Deployment::start();
    let started = json(
        &d.run(
            "alice",
            &[
                "start",
                "--json",
                "--pids",
                "64",
                "--env",
                "GREETING=hi",
                "--",
                "sh",
                "-c",
                "echo $GREETING",
            ],
        )
        .ok(),
    );
    let id = started["job_id"].as_str().unwrap().to_owned();
    let status = d.wait_ended("alice", &id);
    assert_eq!(status["id"], id.as_str());
    assert_eq!(status["owner"], "alice");
    assert_eq!(status["command"], "sh");
    assert_eq!(status["limits"]["pids"], 64);
    assert!(status["enforced"]["pids"].is_boolean());
    assert_eq!(d.run("alice", &["logs", &id]).ok(), "hi\n");

    let human = d.run("alice", &["status", &id]).ok();
    assert!(
        human.contains("State:       FINISHED (exit code 0)"),
        "{human}"
    );
    assert!(
        human.contains("  Tasks:       64, enforced\n")
            || human.contains("  Tasks:       64, not enforced on this host\n"),
        "{human}"
    );
    assert!(human.contains("  Memory:"), "{human}");

    let sleeper = d.start_job("alice", &["sleep", "600"]);
    let all = json(&d.run("alice", &["list", "--json"]).ok());
    let ids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [sleeper.as_str(), id.as_str()], "newest first");
    let running = json(
        &d.run("alice", &["list", "--json", "--state", "running"])
            .ok(),
    );
    assert_eq!(running.as_array().unwrap().len(), 1);
    let table = d.run("alice", &["list"]).ok();
    assert!(
        table.contains(&sleeper) && table.contains("RUNNING"),
        "{table}"
    );
    d.run("alice", &["stop", &sleeper]).ok();
}

#[test]
fn ids_may_be_abbreviated() {
    let d = Deployment::start();
    // 17 jobs: two of them share their first hex digit.
    let ids: Vec<String> = (0..17).map(|_| d.start_job("alice", &["true"])).collect();
    let first = &ids[0];
    let status = json(&d.run("alice", &["status", "--json", &first[..13]]).ok());
    assert_eq!(status["id"], first.as_str());

    let shared = ids
        .iter()
        .find_map(|a| {
            let c = &a[..1];
            (ids.iter().filter(|b| b.starts_with(c)).count() > 1).then(|| c.to_owned())
        })
        .unwrap();
    let ambiguous = d.run("alice", &["status", &shared]);
    assert_eq!(ambiguous.code(), 2, "{ambiguous:?}");
    let line = ambiguous.one_line_error();
    assert!(
        line.contains("matches") && line.contains("give more characters"),
        "{line}"
    );

    let none = ids
        .iter()
        .map(|id| id.chars().next().unwrap())
        .fold("0123456789abcdef".to_owned(), |left, used| {
            left.replace(used, "")
        });
    if let Some(unused) = none.chars().next() {
        let absent = d.run("alice", &["status", &unused.to_string()]);
        assert_eq!(absent.code(), 5, "{absent:?}");
        absent.one_line_error();
    }
    let unknown = d.run("alice", &["status", "6f1c2d3e-4f50-4617-8a9b-0c1d2e3f4a5b"]);
    assert_eq!(unknown.code(), 5, "{unknown:?}");
    unknown.one_line_error();
}

#[test]
fn roles_decide_who_sees_and_does_what() {
    let d = Deployment::start();
    let reader = d.run("rita", &["start", "--", "true"]);
    assert_eq!(reader.code(), 4, "{reader:?}");
    let line = reader.one_line_error();
    assert!(line.starts_with("jobctl: starting true: "), "{line}");

    let admins = d.start_job("admin", &["sleep", "600"]);
    // A user does not see another user's job.
    let hidden = d.run("alice", &["status", &admins]);
    assert_eq!(hidden.code(), 5, "{hidden:?}");
    hidden.one_line_error();
    let hidden_stop = d.run("alice", &["stop", &admins]);
    assert_eq!(hidden_stop.code(), 5, "{hidden_stop:?}");
    // A reader sees every job but cannot stop one.
    assert!(d.run("rita", &["list"]).ok().contains(&admins));
    let stop = d.run("rita", &["stop", &admins]);
    assert_eq!(stop.code(), 4, "{stop:?}");
    stop.one_line_error();
    d.run("admin", &["stop", &admins]).ok();
}

#[test]
fn connection_failures_are_one_clear_line() {
    let d = Deployment::start();
    // A CA that did not sign the gateway's certificate.
    let wrong_ca = run_with_timeout(
        d.jobctl("alice")
            .env("JOBCTL_CA", d.stack.pki.foreign_server_ca())
            .arg("list"),
        CLI_TIMEOUT,
    );
    assert_eq!(wrong_ca.code(), 3, "{wrong_ca:?}");
    let line = wrong_ca.one_line_error();
    assert!(
        line.contains("certificate") && line.contains("--ca"),
        "{line}"
    );

    // A client certificate the gateway's client CA did not sign.
    let (cert, key) = (
        d.stack.pki.path("mallory.pem"),
        d.stack.pki.path("mallory.key"),
    );
    let foreign = run_with_timeout(
        d.jobctl("alice")
            .env("JOBCTL_CERT", cert)
            .env("JOBCTL_KEY", key)
            .arg("list"),
        CLI_TIMEOUT,
    );
    assert_eq!(foreign.code(), 3, "{foreign:?}");
    let line = foreign.one_line_error();
    assert!(line.contains("--cert"), "{line}");

    // Nothing listens on this port.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let unreachable = run_with_timeout(
        d.jobctl("alice")
            .env("JOBCTL_SERVER", format!("127.0.0.1:{port}"))
            .arg("list"),
        CLI_TIMEOUT,
    );
    assert_eq!(unreachable.code(), 3, "{unreachable:?}");
    let line = unreachable.one_line_error();
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");

    // No settings at all: a usage error that says where to set them.
    let unset = run_with_timeout(
        d.jobctl("alice").env_remove("JOBCTL_SERVER").arg("list"),
        CLI_TIMEOUT,
    );
    assert_eq!(unset.code(), 2, "{unset:?}");
    assert!(unset.one_line_error().contains("JOBCTL_SERVER"));
}

#[test]
fn settings_come_from_flags_then_env_then_the_config_file() {
    let d = Deployment::start();
    let config_dir = d.home.path().join(".config/jobctl");
    std::fs::create_dir_all(&config_dir).unwrap();
    for file in ["server-ca.pem", "alice.pem", "alice.key"] {
        std::fs::copy(d.stack.pki.path(file), config_dir.join(file)).unwrap();
    }
    std::fs::write(
        config_dir.join("config.toml"),
        format!(
            "server = \"https://{}\"\nca = \"server-ca.pem\"\ncert = \"alice.pem\"\nkey = \"alice.key\"\nserver_name = \"localhost\"\n",
            d.address()
        ),
    )
    .unwrap();
    let bare = || {
        let mut cmd = Command::new(JOBCTL);
        cmd.env_clear().env("HOME", d.home.path());
        cmd
    };
    // The file alone.
    let listed = run_with_timeout(bare().arg("list"), CLI_TIMEOUT);
    assert_eq!(listed.ok(), "no jobs\n");
    // The environment overrides the file, and a flag overrides the environment.
    let env_wrong = run_with_timeout(
        bare().env("JOBCTL_SERVER", "127.0.0.1:1").arg("list"),
        CLI_TIMEOUT,
    );
    assert_eq!(env_wrong.code(), 3, "{env_wrong:?}");
    let flag_right = run_with_timeout(
        bare()
            .env("JOBCTL_SERVER", "127.0.0.1:1")
            .args(["list", "--server", &d.address()]),
        CLI_TIMEOUT,
    );
    assert_eq!(flag_right.ok(), "no jobs\n");
}

#[test]
fn ctrl_c_stops_the_job_and_exits_130() {
    let d = Deployment::start();
    let child = d
        .jobctl("alice")
        .args(["run", "--", "sh", "-c", "echo started; exec sleep 600"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + CLI_TIMEOUT;
    let id = loop {
        let running = json(
            &d.run("alice", &["list", "--json", "--state", "running"])
                .ok(),
        );
        if let Some(job) = running.as_array().unwrap().first()
            && job["output_bytes"].as_u64() > Some(0)
        {
            break job["id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "the job never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
    kill(pid, Signal::SIGINT).unwrap();
    let outcome = wait_with_timeout(child, CLI_TIMEOUT);
    assert_eq!(outcome.code(), 130, "{outcome:?}");
    assert_eq!(outcome.stdout_text(), "started\n");
    assert!(
        outcome.stderr.contains("interrupted: stopping job"),
        "{}",
        outcome.stderr
    );
    let status = json(&d.run("alice", &["status", "--json", &id]).ok());
    assert_eq!(status["state"], "stopped");
}

#[test]
fn the_debug_tool_lists_jobs_started_through_the_gateway() {
    let d = Deployment::start();
    let id = d.start_job("alice", &["true"]);
    let table = d.stack.supervisor.debug(&["jobs"]).ok();
    let row = table
        .lines()
        .find(|line| line.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not in:\n{table}"));
    assert!(row.contains(" alice "), "{row}");
    let json = json(&d.stack.supervisor.debug(&["job", "--json", &id]).ok());
    assert_eq!(json["owner"], "alice");
}

#[test]
fn completions_need_no_server() {
    for shell in ["bash", "zsh", "fish"] {
        let outcome = run_with_timeout(
            Command::new(JOBCTL)
                .env_clear()
                .args(["completions", shell]),
            CLI_TIMEOUT,
        );
        assert!(outcome.ok().contains("jobctl"), "{shell}");
    }
}

/// A refused start names what is wrong in one short line: the command is
/// not echoed back whole (5,000 arguments made a 29 KB error line before),
/// and an offset no output reaches is an invalid argument, not an internal
/// error.
#[test]
fn refusals_are_short_and_name_the_field() {
    let d = Deployment::start();
    let mut args = vec!["start", "--", "echo"];
    let many: Vec<String> = (0..5000).map(|i| format!("argument-{i}")).collect();
    args.extend(many.iter().map(String::as_str));
    let refused = d.run("alice", &args);
    assert_ne!(refused.code(), 0);
    let line = refused.one_line_error();
    assert!(line.contains("args") && line.contains("4096"), "{line}");
    assert!(line.len() < 400, "{} bytes: {line}", line.len());

    let id = d.start_job("alice", &["echo", "hi"]);
    d.wait_ended("alice", &id);
    let beyond = d.run("alice", &["logs", "--offset", "9223372036854775808", &id]);
    assert_ne!(beyond.code(), 0);
    let line = beyond.one_line_error();
    assert!(
        line.contains("offset") && !line.to_lowercase().contains("internal"),
        "{line}"
    );
    let at_the_end = d.run("alice", &["logs", "--offset", "3", &id]);
    assert_eq!(at_the_end.ok(), "");
}

/// Spawns `jobctl` as `user` with piped output.
fn spawn_jobctl(d: &Deployment, user: &str, args: &[&str]) -> std::process::Child {
    d.jobctl(user)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Starts `jobctl run` of a counter (0 to 39, a line every 0.1 s, then exit
/// 3) and 20 `logs -f` of it; the expected output, `run`, its followers.
fn counter_with_followers(
    d: &Deployment,
) -> (String, std::process::Child, Vec<std::process::Child>) {
    let script = "i=0; while [ $i -lt 40 ]; do echo $i; i=$((i+1)); sleep 0.1; done; exit 3";
    let expected: String = (0..40).map(|i| format!("{i}\n")).collect();
    let run = spawn_jobctl(d, "alice", &["run", "--", "sh", "-c", script]);
    let deadline = Instant::now() + CLI_TIMEOUT;
    let id = loop {
        let jobs = json(
            &d.run("alice", &["list", "--json", "--state", "running"])
                .ok(),
        );
        if let Some(id) = jobs[0]["id"].as_str() {
            break id.to_owned();
        }
        assert!(Instant::now() < deadline, "the job never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    let followers = (0..20)
        .map(|_| spawn_jobctl(d, "alice", &["logs", "-f", &id]))
        .collect();
    (expected, run, followers)
}

/// `run` ends with the job's code and its exact output (having resumed
/// itself, if `client_resumed`; the gateway resumes a lost supervisor
/// unseen); each follower prints the exact output.
fn assert_resumed(
    expected: &str,
    run: std::process::Child,
    followers: Vec<std::process::Child>,
    client_resumed: bool,
) {
    let run = wait_with_timeout(run, CLI_TIMEOUT);
    assert_eq!(run.code(), 3, "the job's own code: {run:?}");
    assert_eq!(run.stdout_text(), expected, "no gap, no repeat");
    assert_eq!(
        run.stderr.contains("resum"),
        client_resumed,
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("stopped job"), "{}", run.stderr);
    for follower in followers {
        let follower = wait_with_timeout(follower, CLI_TIMEOUT);
        assert_eq!(follower.code(), 0, "{follower:?}");
        assert_eq!(follower.stdout_text(), expected);
    }
}

#[test]
fn run_and_follow_resume_across_a_gateway_restart() {
    let mut d = Deployment::start();
    let (expected, run, followers) = counter_with_followers(&d);
    std::thread::sleep(Duration::from_millis(800));
    d.stack.gateway.restart().unwrap();
    assert_resumed(&expected, run, followers, true);
}

#[test]
fn run_and_follow_resume_across_a_supervisor_kill_and_restart() {
    let mut d = Deployment::start();
    let (expected, run, followers) = counter_with_followers(&d);
    std::thread::sleep(Duration::from_millis(800));
    d.stack.supervisor.kill9();
    std::thread::sleep(Duration::from_millis(1000));
    d.stack.supervisor.restart().unwrap();
    assert_resumed(&expected, run, followers, false);
}

/// In fleet mode an admin sees the fleet's hosts; other roles are refused,
/// and a gateway in no fleet says so.
#[test]
fn admins_see_the_fleets_hosts() {
    let pg = jobworker_tests::fixture::Postgres::start().unwrap();
    let fleet = Deployment::start_with(&format!(
        "[fleet]\ndatabase_url = {:?}\nhost_id = \"h1\"\nslots = 4\nlease_ms = 3000\n",
        pg.url()
    ));
    let start = Instant::now();
    let table = loop {
        let outcome = fleet.run("admin", &["hosts"]);
        if outcome.code() == 0 && outcome.stdout_text().contains("h1 ") {
            break outcome.stdout_text();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "h1 never listed: {} {}",
            outcome.stdout_text(),
            outcome.stderr
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(table.starts_with("HOST "), "{table}");
    let line = table.lines().nth(1).unwrap_or_default();
    for field in ["h1 ", "held, ", " no ", " 4 "] {
        assert!(line.contains(field), "{field:?} in {table}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&fleet.run("admin", &["hosts", "--json"]).ok()).unwrap();
    assert_eq!(json[0]["id"], "h1");
    assert_eq!(json[0]["slots"], 4);

    let refused = fleet.run("alice", &["hosts"]);
    assert_eq!(refused.code(), 4, "{}", refused.stderr);
    assert!(refused.stderr.contains("only admins"), "{}", refused.stderr);

    let single = Deployment::start();
    let outcome = single.run("admin", &["hosts"]);
    assert_ne!(outcome.code(), 0);
    assert!(outcome.stderr.contains("no [fleet]"), "{}", outcome.stderr);
}
