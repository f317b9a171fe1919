//! The request a claimed command is carried out with, built from the grant and the person as
//! stored: for all the commands of one claim or one listing, read in three statements.

use super::Dispatcher;
use crate::clock::from_micros;
use crate::connectors::{Connector, GrantRequest, Outcome};
use crate::model::{CommandStatus, PersonRef, Window};
use crate::store::{self, CommandRow, StoreError};

impl Dispatcher {
    /// The request for a claimed command, from the grant and the person as stored; `None` when a
    /// newer decision about the grant overtook the command (then finished as superseded).
    pub(super) async fn request_for(
        &self,
        connector: &dyn Connector,
        owner: &str,
        cmd: &CommandRow,
        probe: bool,
    ) -> Result<Option<GrantRequest>, StoreError> {
        let requests = self
            .requests_for(connector, owner, vec![cmd.clone()], probe)
            .await?;
        Ok(requests.into_iter().next().map(|(_, req)| req))
    }

    /// The requests for claimed commands of one connector, read together (three statements for
    /// all); a command a newer decision about its grant overtook is finished as superseded and
    /// left out.
    pub(super) async fn requests_for(
        &self,
        connector: &dyn Connector,
        owner: &str,
        cmds: Vec<CommandRow>,
        probe: bool,
    ) -> Result<Vec<(CommandRow, GrantRequest)>, StoreError> {
        let Some(first) = cmds.first() else {
            return Ok(Vec::new());
        };
        let keys: Vec<&str> = cmds.iter().map(|c| c.identity_key.as_str()).collect();
        let mut rows = {
            let mut conn = self.store.pool().acquire().await?;
            store::confirm_batch::request_rows(&mut conn, &first.connector, &keys).await?
        };
        let mut out = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            // Only the latest decision about a grant is carried out: an older command was
            // overtaken by a newer one (a rehire after a leave, a leave after a join) and must not
            // undo it.
            let grant = rows
                .grants
                .remove(&(cmd.identity_key.clone(), cmd.target.clone()))
                .filter(|g| g.generation == cmd.generation);
            let Some(grant) = grant else {
                if probe && let Some(b) = self.breakers.get(connector.name()) {
                    // No vendor call, no verdict: the next command probes instead.
                    b.release_probe();
                }
                self.finish(
                    owner,
                    &cmd,
                    CommandStatus::Superseded,
                    None,
                    Some("overtaken by a newer decision".into()),
                    None,
                )
                .await?;
                continue;
            };
            let identity = rows.identities.get(&cmd.identity_key);
            let person_ref = rows.person_refs.get(&cmd.identity_key).cloned();
            let req = self.request_of(&cmd, grant, identity, person_ref);
            out.push((cmd, req));
        }
        Ok(out)
    }

    /// The request for `cmd` from its grant, the person and the vendor's id for the person.
    fn request_of(
        &self,
        cmd: &CommandRow,
        grant: store::GrantRow,
        identity: Option<&store::IdentityRow>,
        person_ref: Option<String>,
    ) -> GrantRequest {
        let attrs = identity.map(|i| i.attrs.clone()).unwrap_or_default();
        let text = |k: &str| {
            attrs
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        GrantRequest {
            person: PersonRef {
                key: cmd.identity_key.clone(),
                name: text("name"),
                email: text("email"),
                attrs: attrs
                    .iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                    .collect(),
            },
            person_ref,
            target: cmd.target.clone(),
            grant_ref: grant.vendor_ref,
            credential: grant.credential,
            window: grant
                .window
                .as_deref()
                .and_then(|w| serde_json::from_str::<Window>(w).ok()),
            valid_until: grant.valid_until.map(from_micros),
            timezone: self
                .config
                .timezone_of(identity.and_then(|i| i.site.as_deref())),
        }
    }
}

/// `outcome` without the vendor's id for the person when the request already carried it: the
/// id is stored once, not again with every change for the person.
pub(super) fn new_refs_only(outcome: Outcome, req: &GrantRequest) -> Outcome {
    let unknown = |p: Option<String>| p.filter(|p| req.person_ref.as_deref() != Some(p.as_str()));
    match outcome {
        Outcome::Confirmed {
            person_ref,
            grant_ref,
        } => Outcome::Confirmed {
            person_ref: unknown(person_ref),
            grant_ref,
        },
        Outcome::Pending {
            person_ref,
            grant_ref,
        } => Outcome::Pending {
            person_ref: unknown(person_ref),
            grant_ref,
        },
    }
}
