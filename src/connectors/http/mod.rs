//! The declarative HTTP connector: runs a vendor profile's operations with the vendor's auth, under
//! its rate limit, and reads the answers with JSONPath. In files by role: compiling a profile,
//! credentials, sending a request, classifying an answer, paging through lists, and the
//! connector that puts them together.

mod auth;
pub mod classify;
pub mod compile;
mod connector;
mod paginate;
mod request;

pub use compile::Paths;
pub use connector::HttpConnector;
