//! Hot-path queries, named so the plan-shape test (tests/suite/store.rs) explains exactly what runs.

use super::*;

pub(super) const SOURCE_RECORD_SQL: &str =
    "SELECT * FROM source_records WHERE source = $1 AND key = $2";
pub(super) const SOURCE_RECORDS_OF_SQL: &str =
    "SELECT * FROM source_records WHERE key = $1 ORDER BY source";
pub(super) const GET_IDENTITY_SQL: &str = "SELECT * FROM identities WHERE key = $1";
pub(super) const GRANTS_OF_SQL: &str =
    "SELECT * FROM grants WHERE identity_key = $1 ORDER BY connector, target";
pub(super) const IDENTITIES_PAGE_SQL: &str =
    "SELECT * FROM identities WHERE key > $1 ORDER BY key LIMIT $2";
pub(super) const IDENTITIES_DUE_SQL: &str =
    "SELECT key FROM identities WHERE next_change_at IS NOT NULL AND next_change_at <= $1
         ORDER BY next_change_at LIMIT $2";
pub(super) const GRANTS_IN_KEY_RANGE_SQL: &str =
    "SELECT * FROM grants WHERE identity_key >= $1 AND identity_key <= $2
         ORDER BY identity_key, connector, target";
pub(super) const RELEASE_HELD_SQL: &str =
    "UPDATE held_changes SET status = 'obsolete', decided_by = 'feed', decided_at = $1
         WHERE status = 'held' AND source = $2 AND key = $3";
pub(super) const SUPERSEDE_COUNT_SQL: &str =
    "SELECT COUNT(*) AS n FROM commands WHERE connector = $1 AND identity_key = $2 AND target = $3
           AND action = 'issue' AND (attempts > 0 OR status NOT IN ('pending', 'superseded'))";
pub(super) const SUPERSEDE_SQL: &str = "UPDATE commands SET status = 'superseded', last_error = 'superseded by a revoke', next_attempt_at = $1
         WHERE connector = $2 AND identity_key = $3 AND target = $4 AND action = 'issue'
           AND status IN ('pending', 'confirming')";
pub(super) const NEXT_DUE_SQL: &str = "SELECT MIN(CASE WHEN status = 'inflight' THEN lease_expires_at ELSE next_attempt_at END) AS due
         FROM commands WHERE connector = $1 AND status IN ('pending', 'confirming', 'inflight')";
pub(super) const UPDATE_CLAIMED_SQL: &str = "UPDATE commands SET status = $1, next_attempt_at = $2, dispatched_at = COALESCE(dispatched_at, $3),
           confirmed_at = $4, confirm_deadline = COALESCE($5, confirm_deadline), last_error = $6,
           lease_owner = NULL, lease_expires_at = NULL, attempts = attempts - $9,
           first_attempt_at = COALESCE(first_attempt_at, $10)
         WHERE id = $7 AND lease_owner = $8 AND status = 'inflight'";
pub(super) const OPEN_COMMAND_FOR_SQL: &str = "SELECT * FROM commands WHERE connector = $1 AND identity_key = $2 AND target = $3 AND action = $4
           AND status IN ('pending', 'inflight', 'confirming') ORDER BY id DESC LIMIT 1";

/// (name, SQL) of every query on the hot path (a feed's changes, planning, reconciliation, the
/// dispatcher's claim and completion), in this backend's dialect where it differs: each must be
/// served by an index, never by a full scan of a large table.
pub fn hot_queries(backend: Backend) -> Vec<(&'static str, String)> {
    let fixed: Vec<(&'static str, &'static str)> = vec![
        ("source_record", SOURCE_RECORD_SQL),
        ("source_records_of", SOURCE_RECORDS_OF_SQL),
        ("get_identity", GET_IDENTITY_SQL),
        ("grants_of", GRANTS_OF_SQL),
        ("identities_page", IDENTITIES_PAGE_SQL),
        ("identities_due", IDENTITIES_DUE_SQL),
        ("grants_in_key_range", GRANTS_IN_KEY_RANGE_SQL),
        ("release_held", RELEASE_HELD_SQL),
        ("supersede_count", SUPERSEDE_COUNT_SQL),
        ("supersede", SUPERSEDE_SQL),
        ("next_due", NEXT_DUE_SQL),
        ("update_claimed", UPDATE_CLAIMED_SQL),
        ("open_command_for", OPEN_COMMAND_FOR_SQL),
        (
            "claim_next",
            match backend {
                Backend::Sqlite => sqlite::CLAIM_SQL,
                Backend::Postgres => postgres::CLAIM_SQL,
            },
        ),
        (
            "claim_many",
            match backend {
                Backend::Sqlite => sqlite::CLAIM_MANY_SQL,
                Backend::Postgres => postgres::CLAIM_MANY_SQL,
            },
        ),
        ("on_target", confirm_batch::ON_TARGET_SQL),
        (
            "claim_confirming_on",
            match backend {
                Backend::Sqlite => confirm_batch::CLAIM_SQLITE,
                Backend::Postgres => confirm_batch::CLAIM_POSTGRES,
            },
        ),
    ];
    // A batch of people's reads and the release of their holds, here for two people.
    let m = batch::Marks::for_backend(backend == Backend::Postgres);
    let batch = [
        (
            "source_records_of_keys",
            batch::source_records_of_keys_sql(m, 2),
        ),
        ("identities_of_keys", batch::identities_of_keys_sql(m, 2)),
        ("grants_of_keys", batch::grants_of_keys_sql(m, 2)),
        ("withdrawn_of_keys", batch::withdrawn_of_keys_sql(m, 2)),
        (
            "requests_of_keys",
            batch::requests_in_force_of_keys_sql(m, 2),
        ),
        ("suspensions_of_keys", batch::suspensions_of_keys_sql(m, 2)),
        (
            "release_held_of_keys",
            batch::release_held_of_keys_sql(m, 2),
        ),
        ("supersede_of_grants", batch::supersede_of_grants_sql(m, 2)),
        (
            "connector_grants_of_keys",
            confirm_batch::connector_grants_of_keys_sql(m, 2),
        ),
        ("await_read_back", confirm_batch::await_read_back_sql(m, 2)),
        ("targets_with_more_due", confirm_batch::more_due_sql(m, 2)),
        ("people_of_keys", confirm_batch::people_of_keys_sql(m, 2)),
        (
            "person_refs_of_keys",
            confirm_batch::person_refs_of_keys_sql(m, 2),
        ),
        ("finish_done", confirm_batch::finish_done_sql(m, 2)),
        ("observe_shown", confirm_batch::observe_shown_sql(m, 2)),
    ];
    fixed
        .into_iter()
        .map(|(name, sql)| (name, sql.to_string()))
        .chain(batch)
        .collect()
}
