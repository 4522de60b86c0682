//! Writes a [`Plan`] as starling.toml text, each key with a comment naming the mosquitto
//! directive it comes from.

use std::fmt::Write as _;
use std::path::Path;

use super::map::{Plan, PlannedBridge, Setting, Val};

/// The TOML text of `plan`, imported from `source`.
pub fn toml(plan: &Plan, source: &Path) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Imported from {} by `starling import-mosquitto`.",
        source.display()
    );
    out.push_str(
        "# Keys not written here take Starling's defaults (docs/configuration.md); some differ\n\
         # from mosquitto's: limits.max_inflight 64 (mosquitto 20), limits.max_keep_alive 3600\n\
         # (65535), limits.max_packet_size 1 MiB (no limit), storage.durability \"sync\" (no\n\
         # persistence unless `persistence true`).\n",
    );
    settings(&mut out, &plan.top);
    for l in &plan.listeners {
        let _ = write!(out, "\n# {}\n[[listener]]\n", l.origin);
        settings(&mut out, &l.settings);
    }
    for (name, table) in [("limits", &plan.limits), ("storage", &plan.storage)] {
        if !table.is_empty() {
            let _ = write!(out, "\n[{name}]\n");
            settings(&mut out, table);
        }
    }
    for b in &plan.bridges {
        out.push_str(&bridge(b));
    }
    out
}

/// One `[[bridge]]` table with its `[[bridge.topic]]` tables.
pub fn bridge(b: &PlannedBridge) -> String {
    let mut out = String::new();
    let _ = write!(out, "\n# {}\n[[bridge]]\n", b.origin);
    settings(&mut out, &b.settings);
    for t in &b.topics {
        out.push_str("[[bridge.topic]]\n");
        settings(&mut out, t);
    }
    out
}

fn settings(out: &mut String, settings: &[Setting]) {
    for s in settings {
        let value = match &s.value {
            Val::Str(v) => toml::Value::String(v.clone()).to_string(),
            Val::Int(n) => n.to_string(),
            Val::Bool(b) => b.to_string(),
            Val::List(v) => {
                toml::Value::Array(v.iter().cloned().map(toml::Value::String).collect()).to_string()
            }
        };
        let _ = match &s.from {
            Some(loc) => writeln!(out, "{} = {value}  # {loc}", s.key),
            None => writeln!(out, "{} = {value}", s.key),
        };
    }
}
