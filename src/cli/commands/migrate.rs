//! `latchkey migrate TARGET --from OLD --to NEW [--to-target T] [--apply]` and `latchkey
//! migrations`: move a door from one connector to another, planned first like `plan` (see
//! `crate::door_migration`).

use crate::cli::{ConfigArg, open_reader};
use crate::door_migration::{self, Door, MoveError};

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The door's target name at the old connector (as the templates name it).
    pub target: String,
    /// The connector it is at now (e.g. `keys`, mechanical keys).
    #[arg(long)]
    pub from: String,
    /// The connector it moves to (e.g. `nuki`).
    #[arg(long)]
    pub to: String,
    /// Its target name at the new connector (default: the same name).
    #[arg(long)]
    pub to_target: Option<String>,
    /// Start it; without this only the plan is printed and nothing changes.
    #[arg(long)]
    pub apply: bool,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, clap::Args)]
pub struct MigrationsArgs {
    #[command(flatten)]
    pub config: ConfigArg,
}

pub async fn migrate(args: MigrateArgs) -> anyhow::Result<i32> {
    let app = open_reader(&args.config).await?;
    let door = Door {
        from_connector: args.from.clone(),
        from_target: args.target.clone(),
        to_connector: args.to.clone(),
        to_target: args
            .to_target
            .clone()
            .unwrap_or_else(|| args.target.clone()),
    };
    let plan = match door_migration::plan(&app.engine, &door).await {
        Ok(p) => p,
        Err(MoveError::Invalid(e)) => {
            eprintln!("migrate: {e}");
            return Ok(1);
        }
        Err(e) => return Err(e.into()),
    };
    println!(
        "Migration of {} at {} to {} at {}: {} people entitled get the new credential; {} old \
         credentials to take back ({} mechanical keys get a return task)",
        door.from_target,
        door.from_connector,
        door.to_target,
        door.to_connector,
        plan.holders.len(),
        plan.holders.len(),
        plan.old_out
    );
    for key in plan.holders.iter().take(50) {
        println!("  {key}");
    }
    if plan.holders.len() > 50 {
        println!("  ... and {} more", plan.holders.len() - 50);
    }
    if !args.apply {
        println!("Nothing changed: run again with --apply to start it.");
        return Ok(0);
    }
    let by = crate::operators::os_actor();
    match door_migration::start(&app.engine, &door, &by).await {
        Ok((id, _, applied)) => {
            println!(
                "migration {id} started by {by}: {} issues and {} revocations enqueued; \
                 `latchkey migrations` shows its progress; it closes when the last old credential is gone",
                applied.issues, applied.revokes
            );
            Ok(0)
        }
        Err(MoveError::Invalid(e)) => {
            eprintln!("migrate: {e}");
            Ok(1)
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn migrations(args: MigrationsArgs) -> anyhow::Result<i32> {
    let app = open_reader(&args.config).await?;
    let pool = app.store().pool();
    let all = crate::store::door_moves::all(pool).await?;
    if all.is_empty() {
        println!("no door migrations");
    }
    for m in all {
        let p = crate::store::door_moves::progress(pool, &m).await?;
        println!(
            "#{} {} {} at {} -> {} at {} (by {} at {}): new credentials {}/{} confirmed; \
             old still out {}, keys back {}, keys outstanding {}",
            m.id,
            m.status,
            m.from_target,
            m.from_connector,
            m.to_target,
            m.to_connector,
            m.started_by,
            crate::cli::output::time(m.started_at),
            p.new_confirmed,
            p.new_wanted,
            p.old_outstanding,
            p.returns_done,
            p.returns_open
        );
    }
    Ok(0)
}
