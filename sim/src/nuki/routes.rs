//! The Nuki Web API's routes and their handlers, each a thin call into [`NukiSim`].

use super::*;

pub(super) fn user_json(u: &UserSnapshot) -> Value {
    json!({
        "accountUserId": u.account_user_id,
        "email": u.email,
        "name": u.name,
        "language": u.language,
    })
}

type Sim = State<Arc<NukiSim>>;
type Params = Query<HashMap<String, String>>;

async fn h_list_users(State(s): Sim, Query(q): Params) -> Answer {
    s.list_users(&q)
}

async fn h_create_user(State(s): Sim, body: Bytes) -> Answer {
    s.create_user(&body)
}

async fn h_delete_user(State(s): Sim, Path(id): Path<String>) -> Answer {
    s.delete_user(parse_id(&id)?)
}

async fn h_create_auth(State(s): Sim, Path(lock): Path<String>, body: Bytes) -> Answer {
    s.create_auth(parse_id(&lock)?, &body)
}

async fn h_list_lock_auths(State(s): Sim, Path(lock): Path<String>) -> Answer {
    s.list_lock_auths(parse_id(&lock)?)
}

async fn h_update_auth(
    State(s): Sim,
    Path((lock, id)): Path<(String, String)>,
    body: Bytes,
) -> Answer {
    s.update_auth(parse_id(&lock)?, &id, &body)
}

async fn h_delete_auth(State(s): Sim, Path((lock, id)): Path<(String, String)>) -> Answer {
    s.delete_auth(parse_id(&lock)?, &id)
}

async fn h_list_auths(State(s): Sim, Query(q): Params) -> Answer {
    s.list_auths(&q)
}

async fn h_bulk_delete(State(s): Sim, body: Bytes) -> Answer {
    s.bulk_delete(&body)
}

async fn h_admin_auths(State(s): Sim) -> Json<Vec<AuthSnapshot>> {
    Json(s.auths())
}

pub(super) fn routes(sim: Arc<NukiSim>) -> Router {
    Router::new()
        .route("/account/user", get(h_list_users).put(h_create_user))
        .route("/account/user/{id}", delete(h_delete_user))
        .route("/smartlock/auth", get(h_list_auths).delete(h_bulk_delete))
        .route(
            "/smartlock/{smartlock_id}/auth",
            get(h_list_lock_auths).put(h_create_auth),
        )
        .route(
            "/smartlock/{smartlock_id}/auth/{auth_id}",
            post(h_update_auth).delete(h_delete_auth),
        )
        .route("/_sim/auths", get(h_admin_auths))
        .with_state(sim)
}
