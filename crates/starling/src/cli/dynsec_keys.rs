//! `starling ctl dynsec` commands for API keys: `create-key` (the broker makes the key;
//! it is printed once, alone on standard output, with a warning on standard error that it
//! is not shown again), `delete-key`, `disable-key`, `enable-key` and `list-keys`.

use clap::Subcommand;
use serde_json::{Value, json};

use super::{Api, CtlError, Kind, Paging, enc, list, refs};

/// The API key commands, flattened into `starling ctl dynsec`.
#[derive(Debug, Clone, Subcommand)]
pub(in crate::cli::ctl) enum KeyCommand {
    /// Create an API key for a machine client, printed once (keep it).
    ///
    /// The client gives the key as its MQTT password, and is known by the key's name.
    CreateKey {
        /// Key name.
        name: String,
        /// A role (repeat for several, highest priority first).
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// A group (repeat for several, highest priority first).
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// The only client id it may connect with.
        #[arg(long)]
        client_id: Option<String>,
        /// Refused this many seconds from now (its connections are closed then).
        #[arg(long, value_name = "SECS")]
        expires_in: Option<u64>,
    },
    /// Delete an API key (its connections are disconnected).
    DeleteKey {
        /// Key name.
        name: String,
    },
    /// Refuse an API key (its connections are disconnected).
    DisableKey {
        /// Key name.
        name: String,
    },
    /// Accept a disabled API key again.
    EnableKey {
        /// Key name.
        name: String,
    },
    /// List API keys (never the keys themselves).
    ListKeys {
        #[command(flatten)]
        paging: Paging,
    },
}

/// Runs one API key command.
pub(super) async fn run(api: &Api<'_>, cmd: &KeyCommand) -> Result<(), CtlError> {
    match cmd {
        KeyCommand::CreateKey {
            name,
            roles,
            groups,
            client_id,
            expires_in,
        } => {
            let body = json!({
                "name": name,
                "client_id": client_id,
                "roles": refs(roles),
                "groups": refs(groups),
                "expires_in_secs": expires_in,
            });
            let v = api.call("POST", "/dynsec/keys", Some(body)).await?;
            let key = v
                .get("key")
                .and_then(Value::as_str)
                .ok_or_else(|| CtlError::Http("the answer has no key".into()))?;
            // The key alone on standard output, so that a script can take it; what to do
            // with it on standard error, where it is not taken with it.
            if api.args.json {
                println!("{v}");
            } else {
                println!("{key}");
            }
            eprintln!(
                "created key {name}: give it as the MQTT password. It is not shown again: \
                 store it now."
            );
        }
        KeyCommand::DeleteKey { name } => {
            let path = format!("/dynsec/keys/{}", enc(name));
            api.call("DELETE", &path, None).await?;
            api.done(&format!("deleted key {name}"));
        }
        KeyCommand::DisableKey { name } => {
            let path = format!("/dynsec/keys/{}", enc(name));
            api.call("PUT", &path, Some(json!({ "disabled": true })))
                .await?;
            api.done(&format!("disabled key {name}"));
        }
        KeyCommand::EnableKey { name } => {
            let path = format!("/dynsec/keys/{}", enc(name));
            api.call("PUT", &path, Some(json!({ "disabled": false })))
                .await?;
            api.done(&format!("enabled key {name}"));
        }
        KeyCommand::ListKeys { paging } => list(api, Kind::Key, paging).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::super::{CtlArgs, CtlCommand};
    use super::super::Dynsec;
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        ctl: CtlArgs,
    }

    #[test]
    fn create_key_takes_roles_groups_a_client_id_and_an_expiry() {
        let cli = Cli::try_parse_from([
            "ctl",
            "dynsec",
            "create-key",
            "billing",
            "--role",
            "a",
            "--role",
            "b",
            "--group",
            "g",
            "--client-id",
            "billing-1",
            "--expires-in",
            "3600",
        ])
        .unwrap();
        match cli.ctl.command {
            CtlCommand::Dynsec(Dynsec::Keys(KeyCommand::CreateKey {
                name,
                roles,
                groups,
                client_id,
                expires_in,
            })) => {
                assert_eq!(name, "billing");
                assert_eq!(roles, ["a", "b"]);
                assert_eq!(groups, ["g"]);
                assert_eq!(client_id.as_deref(), Some("billing-1"));
                assert_eq!(expires_in, Some(3600));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            Cli::try_parse_from(["ctl", "dynsec", "create-key", "k", "--expires-in", "-1"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["ctl", "dynsec", "list-keys", "--all"]).is_ok());
        assert!(Cli::try_parse_from(["ctl", "dynsec", "show", "key", "k"]).is_ok());
    }
}
