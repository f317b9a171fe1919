//! Naming a person on the command line (see `crate::naming`): a name that finds nobody, or several
//! people, is told to the shell and the command exits 1.

pub use crate::naming::{person, targets};

/// The key of the person `who` names, or `None` after telling the shell who could not be found
/// (or that several match), prefixed with the command's name: the command then exits 1.
pub async fn person_key(
    app: &crate::app::App,
    who: &str,
    command: &str,
) -> anyhow::Result<Option<crate::model::PersonKey>> {
    let mut conn = app.store().pool().acquire().await?;
    match person(&mut conn, who).await {
        Ok(i) => Ok(Some(i.key)),
        Err(crate::naming::NamingError::Store(e)) => Err(e.into()),
        Err(e) => {
            eprintln!("{command}: {e}");
            Ok(None)
        }
    }
}
