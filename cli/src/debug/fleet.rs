//! `jobworker-debug hosts | drain HOST | undrain HOST`: the fleet's hosts,
//! in the database that the gateway's configuration (`--gateway-config`,
//! its `[fleet]` table) names. The supervisor is not involved.

use std::path::Path;

use jobworker_fleet::hosts;
use jobworker_fleet::{DbError, FleetFileConfig};
use serde::Deserialize;

use super::FleetCommand;
use crate::exit::CliError;
use crate::render::{self, printable, write_stdout};

/// The part of the gateway's configuration this tool reads; its other keys
/// are the gateway's business.
#[derive(Deserialize)]
struct GatewayFile {
    #[serde(default)]
    fleet: Option<FleetFileConfig>,
}

/// Runs a fleet command; the exit code.
pub async fn run(gateway_config: &Path, command: FleetCommand) -> Result<u8, CliError> {
    let client = connect(gateway_config).await?;
    let (host, draining) = match command {
        FleetCommand::Hosts { json } => {
            let hosts = hosts::list(&client).await.map_err(database)?;
            let text = if json {
                format!("{}\n", render::hosts_json(&hosts))
            } else {
                render::hosts_table(&hosts)
            };
            write_stdout(text.as_bytes()).await?;
            return Ok(0);
        }
        FleetCommand::Drain { host } => (host, true),
        FleetCommand::Undrain { host } => (host, false),
    };
    if !hosts::set_draining(&client, &host, draining)
        .await
        .map_err(database)?
    {
        return Err(CliError::NoSuchHost { host });
    }
    let text = if draining {
        format!(
            "drained {}: it claims no new job; its running jobs go on\n",
            printable(&host)
        )
    } else {
        format!("undrained {}: it claims jobs again\n", printable(&host))
    };
    write_stdout(text.as_bytes()).await?;
    Ok(0)
}

fn database(error: DbError) -> CliError {
    CliError::Database { error }
}

/// Connects to the database of the gateway's `[fleet]` table.
async fn connect(gateway_config: &Path) -> Result<tokio_postgres::Client, CliError> {
    let shown = gateway_config.display();
    let file: GatewayFile =
        jobworker_config::read(gateway_config).map_err(|e| CliError::Usage(e.to_string()))?;
    let fleet = file.fleet.ok_or_else(|| {
        CliError::Usage(format!(
            "{shown} has no [fleet] table: this host is in no fleet (pass the gateway's \
             configuration with --gateway-config)"
        ))
    })?;
    let config = jobworker_fleet::FleetConfig::resolve(&fleet)
        .map_err(|(key, reason)| CliError::Usage(format!("{shown}: `{key}` {reason}")))?;
    config.database.connect().await.map_err(database)
}
