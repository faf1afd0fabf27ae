//! Tests of the library: what it writes reads back with
//! `jobworker_identity` (roles, common names), and the certificates it
//! issues are accepted by rustls from the right CA only.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use jobworker_certs::{
    CaKind, ClientRequest, Error, Overwrite, ServerRequest, Validity, init, issue_client,
    issue_server, role_extension, role_extension_value,
};
use jobworker_identity::{
    CertificateParseError, CommonNameError, ROLE_OID, RoleError, common_name_from_der,
    role_from_der,
};
use jobworker_ipc::{Role, UnknownRole};
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, DnType, DnValue, KeyPair};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;

/// A self-signed certificate with the given subject and extensions.
fn self_signed(subject: DistinguishedName, extensions: Vec<CustomExtension>) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject;
    params.custom_extensions = extensions;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generating a key");
    params
        .self_signed(&key)
        .expect("self-signing")
        .der()
        .to_vec()
}

fn named(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn with_extensions(extensions: Vec<CustomExtension>) -> Vec<u8> {
    self_signed(named("alice"), extensions)
}

fn der_of_pem(path: &Path) -> Vec<u8> {
    let bytes = fs::read(path).expect("reading a certificate");
    x509_parser::pem::parse_x509_pem(&bytes)
        .expect("parsing PEM")
        .1
        .contents
}

#[test]
fn role_reader_distinguishes_every_case() {
    for role in Role::ALL {
        assert_eq!(
            role_from_der(&with_extensions(vec![role_extension(role)])).unwrap(),
            role
        );
    }

    let none = with_extensions(Vec::new());
    assert!(matches!(role_from_der(&none), Err(RoleError::Missing)));

    let unknown = with_extensions(vec![role_extension_value("root")]);
    assert!(matches!(
        role_from_der(&unknown),
        Err(RoleError::Unknown(UnknownRole(name))) if name == "root"
    ));

    let twice = with_extensions(vec![role_extension(Role::User), role_extension(Role::User)]);
    assert!(matches!(
        role_from_der(&twice),
        Err(RoleError::Duplicate { count: 2 })
    ));

    let integer = yasna::construct_der(|writer| writer.write_i64(42));
    let malformed = with_extensions(vec![CustomExtension::from_oid_content(ROLE_OID, integer)]);
    assert!(matches!(
        role_from_der(&malformed),
        Err(RoleError::Malformed)
    ));

    // A UTF8String followed by more bytes is not one DER UTF8String either.
    let mut trailing = yasna::construct_der(|writer| writer.write_utf8_string("user"));
    trailing.push(0);
    let malformed = with_extensions(vec![CustomExtension::from_oid_content(ROLE_OID, trailing)]);
    assert!(matches!(
        role_from_der(&malformed),
        Err(RoleError::Malformed)
    ));

    assert!(matches!(
        role_from_der(b"not a certificate"),
        Err(RoleError::Certificate(CertificateParseError::Der(_)))
    ));
    let mut extra = with_extensions(vec![role_extension(Role::Admin)]);
    extra.push(0);
    assert!(matches!(
        role_from_der(&extra),
        Err(RoleError::Certificate(
            CertificateParseError::TrailingData { len: 1 }
        ))
    ));
}

#[test]
fn role_errors_name_the_problem() {
    let unknown = with_extensions(vec![role_extension_value("root")]);
    let message = role_from_der(&unknown).unwrap_err().to_string();
    assert!(message.contains("unknown role \"root\""), "{message}");
    let message = role_from_der(&with_extensions(Vec::new()))
        .unwrap_err()
        .to_string();
    assert!(message.contains("1.2.840.10070.8.1"), "{message}");
}

#[test]
fn common_name_reader_distinguishes_every_case() {
    assert_eq!(
        common_name_from_der(&self_signed(named("alice"), Vec::new())).unwrap(),
        "alice"
    );

    let mut no_cn = DistinguishedName::new();
    no_cn.push(DnType::OrganizationName, "jobworker");
    assert!(matches!(
        common_name_from_der(&self_signed(no_cn, Vec::new())),
        Err(CommonNameError::Missing)
    ));

    // rcgen keeps one value per type, so the second CN goes in under its raw OID.
    let mut two_cns = named("alice");
    two_cns.push(DnType::CustomDnType(vec![2, 5, 4, 3]), "mallory");
    assert!(matches!(
        common_name_from_der(&self_signed(two_cns, Vec::new())),
        Err(CommonNameError::Multiple { count: 2 })
    ));

    let mut bmp = DistinguishedName::new();
    bmp.push(
        DnType::CommonName,
        DnValue::BmpString("alice".try_into().unwrap()),
    );
    assert!(matches!(
        common_name_from_der(&self_signed(bmp, Vec::new())),
        Err(CommonNameError::NotUtf8)
    ));

    assert!(matches!(
        common_name_from_der(b""),
        Err(CommonNameError::Certificate(_))
    ));
}

fn client_request(user: &str, role: Role) -> ClientRequest {
    ClientRequest {
        user: user.to_owned(),
        role_values: vec![role.as_str().to_owned()],
        validity: Validity::days_from_now(1).expect("one day"),
        prefix: user.to_owned(),
        overwrite: Overwrite::Refuse,
    }
}

fn roots(dir: &Path, kind: CaKind) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(der_of_pem(&kind.cert_path(dir))))
        .expect("adding a root");
    Arc::new(roots)
}

#[test]
fn rustls_accepts_leaves_from_their_own_ca_only() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    init(dir, &Validity::days_from_now(2).unwrap(), Overwrite::Refuse).unwrap();
    issue_client(dir, &client_request("alice", Role::Reader)).unwrap();
    let server = ServerRequest {
        host: "localhost".to_owned(),
        extra_names: vec!["127.0.0.1".to_owned()],
        validity: Validity::days_from_now(1).unwrap(),
        prefix: "server".to_owned(),
        overwrite: Overwrite::Refuse,
    };
    issue_server(dir, &server).unwrap();
    let alice = CertificateDer::from(der_of_pem(&dir.join("alice.pem")));
    let server = CertificateDer::from(der_of_pem(&dir.join("server.pem")));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let now = UnixTime::now();

    let client_verifier = |kind| {
        WebPkiClientVerifier::builder_with_provider(roots(dir, kind), provider.clone())
            .build()
            .unwrap()
    };
    // The non-critical role extension does not stop rustls.
    client_verifier(CaKind::Client)
        .verify_client_cert(&alice, &[], now)
        .unwrap();
    client_verifier(CaKind::Server)
        .verify_client_cert(&alice, &[], now)
        .unwrap_err();
    // A server certificate is not a client certificate, even from the right CA.
    client_verifier(CaKind::Server)
        .verify_client_cert(&server, &[], now)
        .unwrap_err();

    let server_verifier = |kind| {
        WebPkiServerVerifier::builder_with_provider(roots(dir, kind), provider.clone())
            .build()
            .unwrap()
    };
    for name in ["localhost", "127.0.0.1"] {
        let name = ServerName::try_from(name).unwrap();
        server_verifier(CaKind::Server)
            .verify_server_cert(&server, &[], &name, &[], now)
            .unwrap();
        server_verifier(CaKind::Client)
            .verify_server_cert(&server, &[], &name, &[], now)
            .unwrap_err();
    }
    let other = ServerName::try_from("elsewhere").unwrap();
    server_verifier(CaKind::Server)
        .verify_server_cert(&server, &[], &other, &[], now)
        .unwrap_err();
}

#[test]
fn a_ca_key_that_does_not_match_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    init(dir, &Validity::days_from_now(2).unwrap(), Overwrite::Refuse).unwrap();
    fs::copy(CaKind::Server.key_path(dir), CaKind::Client.key_path(dir)).unwrap();
    let err = issue_client(dir, &client_request("alice", Role::User)).unwrap_err();
    assert!(matches!(err, Error::CaKeyMismatch { .. }), "{err}");
    assert!(!dir.join("alice.pem").exists());
}

#[test]
fn errors_name_the_operation_and_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere");
    let err = issue_client(&missing, &client_request("alice", Role::User)).unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "reading CA certificate {}",
            CaKind::Client.cert_path(&missing).display()
        )),
        "{message}"
    );

    // A directory where the key should go cannot be replaced by a file.
    let dir = dir.path();
    init(dir, &Validity::days_from_now(2).unwrap(), Overwrite::Refuse).unwrap();
    fs::create_dir(dir.join("bob.key")).unwrap();
    let mut request = client_request("bob", Role::User);
    request.overwrite = Overwrite::Replace;
    let message = issue_client(dir, &request).unwrap_err().to_string();
    assert!(
        message.starts_with(&format!(
            "writing private key {}: ",
            dir.join("bob.key").display()
        )),
        "{message}"
    );
    let leftovers: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .filter(|name| name.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn invalid_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    init(dir, &Validity::days_from_now(2).unwrap(), Overwrite::Refuse).unwrap();
    for user in ["local:alice", "", "a/b"] {
        let err = issue_client(dir, &client_request(user, Role::User)).unwrap_err();
        assert!(
            matches!(err, Error::InvalidUserName { .. }),
            "{user}: {err}"
        );
    }
    let mut request = client_request("alice", Role::User);
    request.prefix = "../alice".to_owned();
    let err = issue_client(dir, &request).unwrap_err();
    assert!(matches!(err, Error::InvalidOutputPrefix { .. }), "{err}");
    let server = ServerRequest {
        host: "not a host".to_owned(),
        extra_names: Vec::new(),
        validity: Validity::days_from_now(1).unwrap(),
        prefix: "server".to_owned(),
        overwrite: Overwrite::Refuse,
    };
    let err = issue_server(dir, &server).unwrap_err();
    assert!(matches!(err, Error::InvalidServerName { .. }), "{err}");
}
