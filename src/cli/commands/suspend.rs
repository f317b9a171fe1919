//! `latchkey suspend PERSON --reason R [--connectors a,b]` and `latchkey resume PERSON`: an
//! operator withholds a person's access (a lost phone, an investigation) and gives it back (see
//! `crate::suspension`). The running daemon delivers the revocations and issues enqueued here.

use crate::cli::{ConfigArg, lookup, open_reader};

#[derive(Debug, clap::Args)]
pub struct SuspendArgs {
    /// Correlation key, e-mail or full name.
    pub person: String,
    /// Why: recorded in the audit log with the operator.
    #[arg(long)]
    pub reason: String,
    /// Only these connectors (comma-separated); every connector when left out.
    #[arg(long, value_delimiter = ',')]
    pub connectors: Vec<String>,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    /// Correlation key, e-mail or full name.
    pub person: String,
    /// Why: recorded in the audit log with the operator.
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub config: ConfigArg,
}

pub async fn suspend(args: SuspendArgs) -> anyhow::Result<i32> {
    let app = open_reader(&args.config).await?;
    let Some(key) = lookup::person_key(&app, &args.person, "suspend").await? else {
        return Ok(1);
    };
    let connectors = (!args.connectors.is_empty()).then_some(args.connectors.as_slice());
    let by = crate::operators::os_actor();
    match crate::suspension::suspend(&app.engine, &key, connectors, &args.reason, &by).await {
        Ok(a) => {
            let scope = connectors.map_or("every connector".into(), |c| c.join(", "));
            println!(
                "suspended {key} at {scope} by {by}: {} revocations enqueued; `latchkey resume {key}` gives back what policy grants",
                a.revokes
            );
            Ok(0)
        }
        Err(crate::engine::EngineError::Suspension(e)) => {
            eprintln!("suspend: {e}");
            Ok(2)
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn resume(args: ResumeArgs) -> anyhow::Result<i32> {
    let app = open_reader(&args.config).await?;
    let Some(key) = lookup::person_key(&app, &args.person, "resume").await? else {
        return Ok(1);
    };
    let by = crate::operators::os_actor();
    match crate::suspension::resume(&app.engine, &key, args.reason.as_deref(), &by).await {
        Ok(a) => {
            println!(
                "resumed {key} by {by}: {} issues enqueued (what policy grants now)",
                a.issues
            );
            Ok(0)
        }
        Err(crate::engine::EngineError::Suspension(e)) => {
            eprintln!("resume: {e}");
            Ok(1)
        }
        Err(e) => Err(e.into()),
    }
}
