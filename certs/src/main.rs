//! `jobworker-certs`: creates the certificate authorities of jobworker's
//! mutual-TLS gateway and issues its server certificate and client certificates.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use jobworker_certs::{
    ClientRequest, Overwrite, ServerRequest, Validity, WrittenFile, init, issue_client,
    issue_server,
};
use jobworker_ipc::Role;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Creates jobworker's two certificate authorities and issues certificates from them.
///
/// Private keys are written with mode 0600, certificates with mode 0644.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the server CA (server-ca.pem, server-ca.key) and the client CA
    /// (client-ca.pem, client-ca.key).
    Init {
        #[command(flatten)]
        output: Output,
        /// Days the CAs are valid.
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
        #[command(flatten)]
        testing: TestingValidity,
    },
    /// Issue the gateway's certificate (<PREFIX>.pem, <PREFIX>.key), signed by the server CA.
    Server {
        #[command(flatten)]
        output: Output,
        /// Host name or IP address: the subject CN and first subject alternative name.
        #[arg(long, value_name = "HOST")]
        name: String,
        /// Another subject alternative name: an IP address, else a DNS name. Repeatable.
        #[arg(long = "san", value_name = "NAME_OR_IP")]
        sans: Vec<String>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
        /// Prefix of the output files.
        #[arg(long = "out", value_name = "PREFIX", default_value = "server")]
        prefix: String,
        #[command(flatten)]
        testing: TestingValidity,
    },
    /// Issue a client certificate (<PREFIX>.pem, <PREFIX>.key), signed by the client CA.
    Client {
        #[command(flatten)]
        output: Output,
        /// User name, the subject CN: 1 to 64 characters from A-Z a-z 0-9 . _ @ -
        #[arg(long, value_name = "USER")]
        name: String,
        /// Role granted to the user.
        #[arg(
            long,
            required_unless_present_any = ["no_role", "raw_role"],
            value_parser = PossibleValuesParser::new(Role::ALL.map(Role::as_str))
                .try_map(|name| name.parse::<Role>()),
        )]
        role: Option<Role>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
        /// Prefix of the output files [default: USER].
        #[arg(long = "out", value_name = "PREFIX")]
        prefix: Option<String>,
        #[command(flatten)]
        testing: TestingValidity,
        #[command(flatten)]
        role_testing: TestingRole,
    },
    /// Issue a fleet host's peer certificate (<PREFIX>.pem, <PREFIX>.key), signed by the
    /// client CA: CN = the host's host_id, role "peer". Its gateway presents it to the other
    /// hosts' gateways (peer_cert and peer_key in [fleet]); it grants nothing on the public port.
    Peer {
        #[command(flatten)]
        output: Output,
        /// The host's host_id: 1 to 63 of a-z 0-9 -
        #[arg(long, value_name = "HOST_ID")]
        host_id: String,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
        /// Prefix of the output files [default: peer-HOST_ID].
        #[arg(long = "out", value_name = "PREFIX")]
        prefix: Option<String>,
    },
}

/// Where files go.
#[derive(Debug, Args)]
struct Output {
    /// Directory where files are read and written.
    #[arg(long, value_name = "DIR", default_value = ".")]
    dir: PathBuf,
    /// Replace existing output files.
    #[arg(long)]
    force: bool,
}

impl Output {
    fn overwrite(&self) -> Overwrite {
        if self.force {
            Overwrite::Replace
        } else {
            Overwrite::Refuse
        }
    }
}

/// Validity overrides, to make expired or not-yet-valid certificates.
#[derive(Debug, Args)]
#[command(next_help_heading = "Testing aids (certificates for negative tests)")]
struct TestingValidity {
    /// Start of validity, RFC 3339 (e.g. 2020-01-01T00:00:00Z); overrides --days,
    /// which then sets the end unless --not-after is given.
    #[arg(long, value_name = "TIME", value_parser = rfc3339)]
    not_before: Option<OffsetDateTime>,
    /// End of validity, RFC 3339; in the past, makes an expired certificate.
    /// Overrides --days, which then sets the start unless --not-before is given.
    #[arg(long, value_name = "TIME", value_parser = rfc3339)]
    not_after: Option<OffsetDateTime>,
}

impl TestingValidity {
    fn validity(&self, days: u32) -> anyhow::Result<Validity> {
        Ok(Validity::with_overrides(
            days,
            self.not_before,
            self.not_after,
        )?)
    }
}

/// Role extension overrides, to make certificates the gateway must reject.
#[derive(Debug, Args)]
#[command(next_help_heading = "Testing aids (certificates for negative tests)")]
struct TestingRole {
    /// Omit the role extension.
    #[arg(long, conflicts_with_all = ["role", "raw_role", "duplicate_role"])]
    no_role: bool,
    /// Put any string in the role extension instead of --role, e.g. an unknown role.
    #[arg(long, value_name = "STRING", conflicts_with = "role")]
    raw_role: Option<String>,
    /// Put the role extension in twice.
    #[arg(long)]
    duplicate_role: bool,
}

impl TestingRole {
    fn role_values(&self, role: Option<Role>) -> Vec<String> {
        if self.no_role {
            return Vec::new();
        }
        let value = self
            .raw_role
            .clone()
            .or_else(|| role.map(|role| role.as_str().to_owned()));
        let copies = if self.duplicate_role { 2 } else { 1 };
        value.map(|value| vec![value; copies]).unwrap_or_default()
    }
}

fn rfc3339(text: &str) -> Result<OffsetDateTime, time::error::Parse> {
    OffsetDateTime::parse(text, &Rfc3339)
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(written) => {
            for file in written {
                println!("{file}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("jobworker-certs: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<Vec<WrittenFile>> {
    Ok(match command {
        Command::Init {
            output,
            days,
            testing,
        } => {
            init(&output.dir, &testing.validity(days)?, output.overwrite()).with_context(|| {
                format!(
                    "creating the certificate authorities in {}",
                    output.dir.display()
                )
            })?
        }
        Command::Server {
            output,
            name,
            sans,
            days,
            prefix,
            testing,
        } => {
            let request = ServerRequest {
                host: name,
                extra_names: sans,
                validity: testing.validity(days)?,
                prefix,
                overwrite: output.overwrite(),
            };
            issue_server(&output.dir, &request).context("issuing the server certificate")?
        }
        Command::Client {
            output,
            name,
            role,
            days,
            prefix,
            testing,
            role_testing,
        } => {
            let request = ClientRequest {
                role_values: role_testing.role_values(role),
                validity: testing.validity(days)?,
                prefix: prefix.unwrap_or_else(|| name.clone()),
                overwrite: output.overwrite(),
                user: name,
            };
            issue_client(&output.dir, &request).context("issuing the client certificate")?
        }
        Command::Peer {
            output,
            host_id,
            days,
            prefix,
        } => {
            if !jobworker_ipc::types::is_host_id(&host_id) {
                anyhow::bail!(
                    "--host-id {host_id:?} is not 1 to 63 of a-z 0-9 - (not starting with -)"
                );
            }
            let request = ClientRequest {
                role_values: vec![jobworker_identity::PEER_ROLE.to_owned()],
                validity: Validity::with_overrides(days, None, None)?,
                prefix: prefix.unwrap_or_else(|| format!("peer-{host_id}")),
                overwrite: output.overwrite(),
                user: host_id,
            };
            issue_client(&output.dir, &request).context("issuing the peer certificate")?
        }
    })
}
