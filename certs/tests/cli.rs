//! End-to-end tests of the `jobworker-certs` binary, checked with x509-parser
//! and with the `openssl` command, which these tests require.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use jobworker_identity::{RoleError, role_from_der, role_of};
use jobworker_ipc::{Role, UnknownRole};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_jobworker-certs"))
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("running jobworker-certs")
}

/// Runs the binary, which must succeed; returns its standard output.
fn certs(dir: &Path, args: &[&str]) -> String {
    let output = run(dir, args);
    assert!(
        output.status.success(),
        "jobworker-certs {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// Runs the binary, which must fail; returns its standard error.
fn certs_fails(dir: &Path, args: &[&str]) -> String {
    let output = run(dir, args);
    assert!(
        !output.status.success(),
        "jobworker-certs {args:?} succeeded"
    );
    String::from_utf8(output.stderr).expect("UTF-8 errors")
}

/// Runs `openssl` in `dir`; a missing `openssl` fails the test.
fn openssl(dir: &Path, args: &[&str]) -> Output {
    match Command::new("openssl").args(args).current_dir(dir).output() {
        Ok(output) => output,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            panic!("the openssl command is required by these tests (apt-get install openssl)")
        }
        Err(err) => panic!("running openssl: {err}"),
    }
}

/// Whether `openssl verify` accepts `leaf` as issued by `ca` for `purpose`.
fn openssl_verifies(dir: &Path, ca: &str, leaf: &str, purpose: &str) -> (bool, String) {
    let output = openssl(
        dir,
        &[
            "verify",
            "-x509_strict",
            "-purpose",
            purpose,
            "-CAfile",
            ca,
            leaf,
        ],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn der(dir: &Path, file: &str) -> Vec<u8> {
    let bytes = fs::read(dir.join(file)).expect("reading a certificate");
    let (rest, pem) = x509_parser::pem::parse_x509_pem(&bytes).expect("parsing PEM");
    assert!(rest.is_empty(), "{file} holds more than one PEM block");
    pem.contents
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).expect("parsing DER");
    assert!(rest.is_empty());
    cert
}

fn mode(dir: &Path, file: &str) -> u32 {
    fs::metadata(dir.join(file))
        .expect("reading metadata")
        .permissions()
        .mode()
        & 0o777
}

fn eku(cert: &X509Certificate<'_>) -> (bool, bool, bool) {
    let eku = cert
        .extended_key_usage()
        .expect("parsing extended key usage")
        .expect("an extended key usage");
    assert!(!eku.critical);
    let eku = eku.value;
    (
        eku.server_auth,
        eku.client_auth,
        eku.any || !eku.other.is_empty(),
    )
}

#[test]
fn init_server_and_client_end_to_end() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();

    let out = certs(dir, &["init"]);
    assert_eq!(out.lines().count(), 4, "{out}");
    for file in [
        "server-ca.key",
        "server-ca.pem",
        "client-ca.key",
        "client-ca.pem",
    ] {
        assert!(out.contains(file), "{out}");
    }
    let out = certs(
        dir,
        &[
            "server",
            "--name",
            "localhost",
            "--san",
            "127.0.0.1",
            "--san",
            "gw.test",
        ],
    );
    assert_eq!(out.lines().count(), 2, "{out}");
    let out = certs(dir, &["client", "--name", "alice", "--role", "admin"]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            format!(
                "wrote private key {} (mode 0600)",
                dir.join("alice.key").display()
            ),
            format!(
                "wrote certificate {} (mode 0644)",
                dir.join("alice.pem").display()
            ),
        ]
    );

    for key in ["server-ca.key", "client-ca.key", "server.key", "alice.key"] {
        assert_eq!(mode(dir, key), 0o600, "{key}");
    }
    for cert in ["server-ca.pem", "client-ca.pem", "server.pem", "alice.pem"] {
        assert_eq!(mode(dir, cert), 0o644, "{cert}");
    }
    let names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 8, "unexpected files: {names:?}");

    // Chains, checked by openssl.
    let (ok, text) = openssl_verifies(dir, "client-ca.pem", "alice.pem", "sslclient");
    assert!(ok, "{text}");
    let (ok, text) = openssl_verifies(dir, "server-ca.pem", "alice.pem", "sslclient");
    assert!(!ok, "alice.pem chains to the server CA: {text}");
    let (ok, text) = openssl_verifies(dir, "server-ca.pem", "server.pem", "sslserver");
    assert!(ok, "{text}");
    let (ok, text) = openssl_verifies(dir, "client-ca.pem", "server.pem", "sslserver");
    assert!(!ok, "server.pem chains to the client CA: {text}");
    // Each leaf is for its own side only.
    let (ok, text) = openssl_verifies(dir, "client-ca.pem", "alice.pem", "sslserver");
    assert!(!ok, "alice.pem is accepted as a server certificate: {text}");
    let (ok, text) = openssl_verifies(dir, "server-ca.pem", "server.pem", "sslclient");
    assert!(
        !ok,
        "server.pem is accepted as a client certificate: {text}"
    );

    // The role extension, as openssl prints it.
    let output = openssl(dir, &["x509", "-noout", "-text", "-in", "alice.pem"]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).expect("UTF-8 output");
    assert!(text.contains("1.2.840.10070.8.1:"), "{text}");
    assert!(text.contains("admin"), "{text}");
    assert!(
        text.contains("Subject: O = jobworker, CN = alice"),
        "{text}"
    );
    assert!(
        text.contains("Issuer: O = jobworker, CN = jobworker client CA"),
        "{text}"
    );

    // Chains and contents, checked with x509-parser.
    let (server_ca, client_ca) = (der(dir, "server-ca.pem"), der(dir, "client-ca.pem"));
    let (server_ca, client_ca) = (parse(&server_ca), parse(&client_ca));
    let alice = der(dir, "alice.pem");
    let alice = parse(&alice);
    alice
        .verify_signature(Some(client_ca.public_key()))
        .unwrap();
    assert!(
        alice
            .verify_signature(Some(server_ca.public_key()))
            .is_err()
    );
    let server = der(dir, "server.pem");
    let server = parse(&server);
    server
        .verify_signature(Some(server_ca.public_key()))
        .unwrap();
    assert!(
        server
            .verify_signature(Some(client_ca.public_key()))
            .is_err()
    );

    let roles: Vec<_> = alice
        .iter_extensions()
        .filter(|ext| ext.oid.to_id_string() == "1.2.840.10070.8.1")
        .collect();
    assert_eq!(roles.len(), 1);
    assert!(!roles[0].critical);
    let value = yasna::parse_der(roles[0].value, |reader| reader.read_utf8string()).unwrap();
    assert_eq!(value, "admin");
    assert_eq!(role_of(&alice).unwrap(), Role::Admin);
    assert!(matches!(role_of(&server), Err(RoleError::Missing)));
    assert_eq!(jobworker_identity::common_name_of(&alice).unwrap(), "alice");
    assert_eq!(
        jobworker_identity::common_name_of(&server).unwrap(),
        "localhost"
    );

    assert_eq!(eku(&alice), (false, true, false));
    assert_eq!(eku(&server), (true, false, false));
    for leaf in [&alice, &server] {
        let constraints = leaf.basic_constraints().unwrap().unwrap().value;
        assert!(!constraints.ca);
        let usage = leaf.key_usage().unwrap().unwrap().value;
        assert!(usage.digital_signature() && !usage.key_cert_sign());
    }
    let sans: Vec<String> = server
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::DNSName(dns) => format!("DNS:{dns}"),
            GeneralName::IPAddress(ip) => format!("IP:{ip:?}"),
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect();
    assert_eq!(sans, ["DNS:localhost", "IP:[127, 0, 0, 1]", "DNS:gw.test"]);

    for (ca, name) in [
        (&server_ca, "jobworker server CA"),
        (&client_ca, "jobworker client CA"),
    ] {
        assert_eq!(jobworker_identity::common_name_of(ca).unwrap(), name);
        let constraints = ca.basic_constraints().unwrap().unwrap().value;
        assert!(constraints.ca);
        assert_eq!(constraints.path_len_constraint, Some(0));
        let usage = ca.key_usage().unwrap().unwrap().value;
        assert!(usage.key_cert_sign() && usage.crl_sign() && !usage.digital_signature());
        let lifetime = ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp();
        assert_eq!(
            lifetime,
            (Duration::days(3650) + Duration::minutes(5)).whole_seconds()
        );
    }

    // Validity: from five minutes ago (clock skew) to 90 days from now.
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let not_before = alice.validity().not_before.timestamp();
    let not_after = alice.validity().not_after.timestamp();
    let skew = Duration::minutes(5).whole_seconds();
    assert!(
        (now - skew - 60..=now - skew).contains(&not_before),
        "{not_before}"
    );
    let days = Duration::days(90).whole_seconds();
    assert!(
        (now + days - 60..=now + days).contains(&not_after),
        "{not_after}"
    );
    assert_ne!(alice.raw_serial(), server.raw_serial());
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    certs(dir, &["init"]);
    let before = fs::read(dir.join("client-ca.key")).unwrap();

    let err = certs_fails(dir, &["init"]);
    assert!(err.contains("refusing to overwrite existing file"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(fs::read(dir.join("client-ca.key")).unwrap(), before);

    // Nothing is written when only one of the four files exists.
    let other = tempfile::tempdir().unwrap();
    fs::write(other.path().join("client-ca.pem"), "mine").unwrap();
    let err = certs_fails(other.path(), &["init"]);
    assert!(err.contains("client-ca.pem"), "{err}");
    assert_eq!(fs::read_dir(other.path()).unwrap().count(), 1);

    certs(dir, &["init", "--force"]);
    assert_ne!(fs::read(dir.join("client-ca.key")).unwrap(), before);
    assert_eq!(mode(dir, "client-ca.key"), 0o600);

    // Leaves are not overwritten either.
    certs(dir, &["client", "--name", "alice", "--role", "user"]);
    let err = certs_fails(dir, &["client", "--name", "alice", "--role", "admin"]);
    assert!(err.contains("alice.key"), "{err}");
    certs(
        dir,
        &["client", "--name", "alice", "--role", "admin", "--force"],
    );
    assert_eq!(role_from_der(&der(dir, "alice.pem")).unwrap(), Role::Admin);
}

#[test]
fn expired_and_not_yet_valid_certificates() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    certs(dir, &["init"]);
    certs(
        dir,
        &[
            "client",
            "--name",
            "old",
            "--role",
            "user",
            "--not-after",
            "2020-01-01T00:00:00Z",
        ],
    );
    let (ok, text) = openssl_verifies(dir, "client-ca.pem", "old.pem", "sslclient");
    assert!(!ok && text.contains("expired"), "{text}");
    let old = der(dir, "old.pem");
    let old = parse(&old);
    assert_eq!(old.validity().not_after.timestamp(), 1_577_836_800);
    // --days sets the other end.
    assert_eq!(
        old.validity().not_before.timestamp(),
        1_577_836_800 - Duration::days(90).whole_seconds()
    );

    certs(
        dir,
        &[
            "server",
            "--name",
            "localhost",
            "--not-before",
            "2999-01-01T00:00:00Z",
            "--days",
            "1",
        ],
    );
    let (ok, text) = openssl_verifies(dir, "server-ca.pem", "server.pem", "sslserver");
    assert!(!ok && text.contains("not yet valid"), "{text}");

    let err = certs_fails(
        dir,
        &[
            "client",
            "--name",
            "bad",
            "--role",
            "user",
            "--not-before",
            "2021-01-01T00:00:00Z",
            "--not-after",
            "2020-01-01T00:00:00Z",
        ],
    );
    assert!(err.contains("invalid validity period"), "{err}");
    let err = certs_fails(
        dir,
        &[
            "client",
            "--name",
            "bad",
            "--role",
            "user",
            "--not-after",
            "yesterday",
        ],
    );
    assert!(err.contains("--not-after"), "{err}");
}

#[test]
fn testing_aids_make_certificates_with_bad_roles() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    certs(dir, &["init"]);
    certs(dir, &["client", "--name", "norole", "--no-role"]);
    certs(dir, &["client", "--name", "unknown", "--raw-role", "root"]);
    certs(
        dir,
        &[
            "client",
            "--name",
            "twice",
            "--role",
            "reader",
            "--duplicate-role",
        ],
    );
    certs(
        dir,
        &[
            "client", "--name", "reader", "--role", "reader", "--out", "r",
        ],
    );

    // All chain to the client CA: the gateway must reject them for their role.
    for leaf in ["norole.pem", "unknown.pem", "twice.pem", "r.pem"] {
        let (ok, text) = openssl_verifies(dir, "client-ca.pem", leaf, "sslclient");
        assert!(ok, "{leaf}: {text}");
    }
    assert!(matches!(
        role_from_der(&der(dir, "norole.pem")),
        Err(RoleError::Missing)
    ));
    assert!(matches!(
        role_from_der(&der(dir, "unknown.pem")),
        Err(RoleError::Unknown(UnknownRole(role))) if role == "root"
    ));
    assert!(matches!(
        role_from_der(&der(dir, "twice.pem")),
        Err(RoleError::Duplicate { count: 2 })
    ));
    assert_eq!(role_from_der(&der(dir, "r.pem")).unwrap(), Role::Reader);
}

#[test]
fn bad_arguments_are_refused() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let err = certs_fails(dir, &["client", "--name", "alice", "--role", "user"]);
    assert!(err.contains("reading CA certificate"), "{err}");
    assert!(err.contains("client-ca.pem"), "{err}");

    certs(dir, &["init"]);
    let err = certs_fails(dir, &["client", "--name", "local:alice", "--role", "user"]);
    assert!(err.contains("invalid user name \"local:alice\""), "{err}");
    let long = "a".repeat(65);
    certs_fails(dir, &["client", "--name", &long, "--role", "user"]);
    let err = certs_fails(dir, &["client", "--name", "alice", "--role", "root"]);
    assert!(
        err.contains("possible values: admin, user, reader"),
        "{err}"
    );
    certs_fails(dir, &["client", "--name", "alice"]);
    certs_fails(
        dir,
        &["client", "--name", "alice", "--role", "user", "--no-role"],
    );
    certs_fails(dir, &["server", "--name", "localhost", "--days", "0"]);
    let err = certs_fails(dir, &["server", "--name", "bad name"]);
    assert!(err.contains("invalid server name"), "{err}");
    assert_eq!(fs::read_dir(dir).unwrap().count(), 4);
}
