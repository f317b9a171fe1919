//! `latchkey bench`: figures against the physical floor. Filled in below.

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Revocations to drain.
    #[arg(long, default_value_t = 10_000)]
    pub revocations: usize,
    /// Connector rate limit (requests per second).
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
}

pub async fn run(_args: BenchArgs) -> anyhow::Result<i32> {
    anyhow::bail!("not implemented yet")
}
