//! Lists: page by page, each page checked against the shape the profile declares, and the whole
//! listing bounded in size. A listing that cannot be read is an error, never an empty list: a
//! revoke must not be confirmed by an answer nobody could read.

use super::super::ConnectorError;
use super::compile::op;
use super::connector::HttpConnector;
use serde_json::Value;

impl HttpConnector {
    /// Every item of a list operation, across pages when the operation paginates.
    pub(super) async fn list(
        &self,
        name: &'static str,
        ctx: &Value,
    ) -> Result<Vec<Value>, ConnectorError> {
        if self
            .paths
            .get(name)
            .and_then(|p| p.items.as_ref())
            .is_none()
        {
            return Ok(vec![]);
        }
        let pagination = op(&self.profile, name).and_then(|o| o.pagination.as_ref());
        let Some(pg) = pagination else {
            let a = self.call_page(name, ctx, &[]).await?;
            return self.page_items(name, a.status, &a.body);
        };
        let mut out = Vec::new();
        let mut offset: u64 = 0;
        let mut bytes: u64 = 0;
        for _ in 0..pg.max_pages.max(1) {
            let extra = [
                (pg.offset_param.clone(), offset.to_string()),
                (pg.limit_param.clone(), pg.page_size.to_string()),
            ];
            let a = self.call_page(name, ctx, &extra).await?;
            bytes = bytes.saturating_add(a.bytes);
            if bytes > self.max_response_bytes {
                return Err(self.transient(
                    format!(
                        "{name}: the listing passed {} bytes after {offset} items (max_response_bytes)",
                        self.max_response_bytes
                    ),
                    None,
                ));
            }
            let page = self.page_items(name, a.status, &a.body)?;
            let got = page.len() as u64;
            out.extend(page);
            offset = offset.saturating_add(got);
            let total = self.total(name, pg.range_header.as_deref(), &a.headers, &a.body);
            if got < u64::from(pg.page_size) || got == 0 || total.is_some_and(|t| offset >= t) {
                return Ok(out);
            }
        }
        Ok(out)
    }

    /// The total a page announces: a `start-end/count` header (Kisi's X-Collection-Range,
    /// vendor-apis.md Kisi) or a JSONPath into the body.
    fn total(
        &self,
        name: &str,
        range_header: Option<&str>,
        headers: &reqwest::header::HeaderMap,
        body: &Value,
    ) -> Option<u64> {
        match (
            range_header,
            self.paths.get(name).and_then(|p| p.total.as_ref()),
        ) {
            (Some(h), _) => headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit_once('/'))
                .and_then(|(_, n)| n.trim().parse::<u64>().ok()),
            (None, Some(p)) => p.query(body).first().and_then(Value::as_u64),
            (None, None) => None,
        }
    }

    /// The items of one page. A declared `gone` status is the vendor saying there is nothing;
    /// otherwise the list the profile names must be there and be a list.
    fn page_items(
        &self,
        name: &str,
        status: u16,
        body: &Value,
    ) -> Result<Vec<Value>, ConnectorError> {
        if op(&self.profile, name).is_some_and(|o| o.gone.contains(&status)) {
            return Ok(vec![]);
        }
        let Some(paths) = self.paths.get(name) else {
            return Ok(vec![]);
        };
        let Some(items) = paths.items.as_ref() else {
            return Ok(vec![]);
        };
        let shape_error = |what: String| {
            let mut seen = body.to_string();
            seen.truncate(120);
            self.transient(
                format!("{name} answered HTTP {status} without the list the profile declares: {what}; received {seen}"),
                None,
            )
        };
        match &paths.container {
            Some((expr, container)) => match container.query(body).exactly_one() {
                Ok(Value::Array(_)) => {}
                Ok(other) => {
                    return Err(shape_error(format!(
                        "`{expr}` is a {} and not a list",
                        kind(other)
                    )));
                }
                Err(_) => return Err(shape_error(format!("`{expr}` is missing"))),
            },
            None if body.is_null() => return Err(shape_error("the answer is empty".into())),
            None => {}
        }
        Ok(items.query(body).all().into_iter().cloned().collect())
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "mapping",
    }
}
