//! When each scheduled job last ran.

use super::*;

pub async fn last_run(pool: &AnyPool, job: &str) -> Result<Option<i64>> {
    let row = sqlx::query("SELECT last_run_at FROM job_runs WHERE job = $1")
        .bind(job)
        .fetch_optional(pool)
        .await?;
    row.map(|r| Ok(r.try_get("last_run_at")?)).transpose()
}

pub async fn set_last_run(conn: &mut AnyConnection, job: &str, at: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO job_runs (job, last_run_at) VALUES ($1, $2)
         ON CONFLICT (job) DO UPDATE SET last_run_at = excluded.last_run_at",
    )
    .bind(job)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
