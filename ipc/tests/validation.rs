//! Each validated type accepts what it should and refuses the rest, naming the
//! field.
#![allow(clippy::unwrap_used, reason = "a test fails loudest by unwrapping")]

use jobworker_ipc::types::*;

fn field_of<T: std::fmt::Debug>(r: Result<T, Invalid>) -> String {
    r.unwrap_err().field
}

#[test]
fn user_names() {
    for ok in ["alice", "a", "bob.smith", "ci-runner_2", "ops@example.com"] {
        UserName::new(ok).unwrap();
    }
    for bad in ["", "local:root", "a b", "é", "a\0", &"x".repeat(65)] {
        assert_eq!(field_of(UserName::new(bad)), "user", "{bad:?}");
    }
    assert_eq!(
        Owner::Local(UserName::new("root").unwrap()).to_string(),
        "local:root"
    );
    assert_eq!(
        Owner::Remote(UserName::new("bob").unwrap()).to_string(),
        "bob"
    );
}

/// The names certificates carry, and nothing else.
#[test]
fn role_names_round_trip() {
    for role in Role::ALL {
        assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        assert_eq!(role.to_string(), role.as_str());
    }
    assert_eq!(
        "Admin".parse::<Role>(),
        Err(UnknownRole("Admin".to_owned()))
    );
    assert_eq!("".parse::<Role>(), Err(UnknownRole(String::new())));
}

#[test]
fn commands() {
    for ok in ["/bin/echo", "sh", "python3", "/opt/my tool/run"] {
        Command::new(ok).unwrap();
    }
    for bad in [
        "",
        "./run",
        "bin/sh",
        "/bin/e\0cho",
        &format!("/{}", "x".repeat(4096)),
    ] {
        assert_eq!(field_of(Command::new(bad)), "command", "{bad:?}");
    }
}

#[test]
fn args() {
    Args::new(vec![]).unwrap();
    Args::new(vec!["".into(), "any \u{7f} bytes".into()]).unwrap();
    assert_eq!(
        field_of(Args::new(vec!["ok".into(), "n\0".into()])),
        "args[1]"
    );
    assert_eq!(field_of(Args::new(vec!["x".into(); MAX_ARGS + 1])), "args");
    assert_eq!(
        field_of(Args::new(vec!["x".repeat(MAX_ARG_LEN + 1)])),
        "args[0]"
    );
    let big = "x".repeat(MAX_ARG_LEN);
    assert_eq!(
        field_of(Args::new(vec![big.clone(), big.clone(), big])),
        "args"
    );
}

#[test]
fn env() {
    let var = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: value.into(),
    };
    Env::new(vec![var("A", ""), var("_B1", "x=y")]).unwrap();
    for bad in ["", "1A", "A-B", "A=B", "A\0"] {
        assert_eq!(
            field_of(Env::new(vec![var(bad, "v")])),
            "env[0].name",
            "{bad:?}"
        );
    }
    assert_eq!(field_of(Env::new(vec![var("A", "v\0")])), "env[0].value");
    assert_eq!(
        field_of(Env::new(vec![var("A", "1"), var("A", "2")])),
        "env[1].name"
    );
    let many: Vec<_> = (0..=MAX_ENV_VARS)
        .map(|i| var(&format!("V{i}"), ""))
        .collect();
    assert_eq!(field_of(Env::new(many)), "env");
}

#[test]
fn working_dirs_and_request_ids() {
    WorkingDir::new("/home/alice").unwrap();
    assert_eq!(field_of(WorkingDir::new("tmp")), "working_dir");
    assert_eq!(field_of(WorkingDir::new("/t\0mp")), "working_dir");
    RequestId::new("9f1c-retry").unwrap();
    for bad in ["", "a b", "\u{e9}", &"r".repeat(129)] {
        assert_eq!(field_of(RequestId::new(bad)), "request_id", "{bad:?}");
    }
}

#[test]
fn limits_ranges() {
    Limits::new(Some(10), Some(1 << 20), Some(4096), Some(4096), Some(1)).unwrap();
    Limits::new(None, None, None, None, None).unwrap();
    let cases = [
        (
            Limits::new(Some(9), None, None, None, None),
            "limits.cpu_millicores",
        ),
        (
            Limits::new(Some(1_000_001), None, None, None, None),
            "limits.cpu_millicores",
        ),
        (
            Limits::new(None, Some(1000), None, None, None),
            "limits.memory_bytes",
        ),
        (
            Limits::new(None, None, Some(1), None, None),
            "limits.io_read_bytes_per_sec",
        ),
        (
            Limits::new(None, None, None, Some(0), None),
            "limits.io_write_bytes_per_sec",
        ),
        (Limits::new(None, None, None, None, Some(0)), "limits.pids"),
    ];
    for (result, field) in cases {
        assert_eq!(field_of(result), field);
    }
}

#[test]
fn limits_defaults_fill_only_unset_values() {
    let asked = Limits::new(Some(500), None, None, None, None).unwrap();
    let defaults = Limits::new(Some(1000), Some(1 << 30), None, None, Some(64)).unwrap();
    let merged = asked.or(defaults);
    assert_eq!(merged.cpu_millicores(), Some(500));
    assert_eq!(merged.memory_bytes(), Some(1 << 30));
    assert_eq!(merged.pids(), Some(64));
    assert_eq!(merged.io_read_bps(), None);
}

#[test]
fn grace_page_size_and_job_ids() {
    GraceMs::new(0).unwrap();
    assert_eq!(field_of(GraceMs::new(MAX_GRACE_MS + 1)), "grace_period");
    assert_eq!(field_of(PageSize::new(0)), "page_size");
    assert_eq!(field_of(PageSize::new(MAX_PAGE_SIZE + 1)), "page_size");
    let id = JobId::random();
    assert_eq!(id.to_string().parse::<JobId>().unwrap(), id);
    assert_eq!(id.short().len(), 12);
    assert_eq!(field_of("not-a-job".parse::<JobId>()), "job_id");
}
