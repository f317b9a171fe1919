//! What operators see and do, computed once for both surfaces: the JSON handlers of `/api/v1`
//! (`routes.rs`) and the web console's pages (`crate::api::console`). Each function checks
//! nothing about the caller (the surfaces require roles before calling) and answers a problem
//! document on failure.

mod changes;
mod governance;
mod people;
mod reports;
mod reviews;

pub use changes::*;
pub use governance::*;
pub use people::*;
pub use reports::*;
pub use reviews::*;
