//! `latchkey check`: validate configuration, mappings, templates and connector profiles, and lint
//! the policy against what the sources produce and the connectors map.

use crate::cli::output::{OutputArg, print_json};
use crate::cli::{ConfigArg, load};
use anyhow::Context;
use serde::Serialize;

pub const SCHEMA: &str = "latchkey.check/v1";

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub output: OutputArg,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, Serialize)]
struct Checked {
    config: String,
    ok: bool,
    sources: Vec<String>,
    templates: Vec<String>,
    connectors: Vec<String>,
    /// Policy mistakes (each also on stderr).
    errors: Vec<String>,
}

/// A configuration that does not load is an error (stderr, exit 1) before any document is
/// printed; policy mistakes are listed in the document and on stderr, and exit 1.
pub async fn run(args: CheckArgs) -> anyhow::Result<i32> {
    let c = &args.config;
    let config = load(c)?;
    let names: Vec<String> = config.connectors.keys().cloned().collect();
    let policy = crate::policy::Policy::load(&config.resolve(&config.policy.templates), &names)?;
    for (name, src) in &config.sources.hr {
        crate::sources::hr::load_mapping(&config.resolve(&src.mapping))
            .with_context(|| format!("source hr.{name}"))?;
    }
    for (name, src) in &config.sources.ldap {
        crate::sources::ldap::load_mapping(name, &config.resolve(&src.mapping))
            .with_context(|| format!("source ldap.{name}"))?;
    }
    // SIEM sinks: a CA file that does not load or a header secret that is not set.
    crate::audit::forward::check(&config)?;
    // `name (profile)` per connector, for the table.
    let profiles = crate::connectors::check_profiles(&config)?;
    let lints = policy.lint(
        &crate::reconcile::produced_attributes(&config)?,
        &config
            .connectors
            .iter()
            .map(|(n, c)| (n.clone(), c.targets.keys().cloned().collect()))
            .collect(),
    );
    let sources: Vec<String> = (config.sources.hr.keys().map(|k| format!("hr.{k}")))
        .chain(config.sources.ldap.keys().map(|k| format!("ldap.{k}")))
        .chain(config.scim.tenants.keys().map(|k| format!("scim.{k}")))
        .collect();
    let checked = Checked {
        config: c.config.display().to_string(),
        ok: lints.is_empty(),
        sources,
        templates: policy.template_names(),
        connectors: config.connectors.keys().cloned().collect(),
        errors: lints.iter().map(ToString::to_string).collect(),
    };
    for l in &checked.errors {
        eprintln!("error: {l}");
    }
    if !checked.ok {
        eprintln!(
            "{}: {} policy mistakes",
            checked.config,
            checked.errors.len()
        );
    }
    if args.output.json() {
        print_json(SCHEMA, &checked)?;
    } else if checked.ok {
        println!("{}: ok", checked.config);
        println!("  sources:    {}", checked.sources.join(", "));
        println!("  templates:  {}", checked.templates.join(", "));
        println!("  connectors: {}", profiles.join(", "));
    }
    Ok(i32::from(!checked.ok))
}
