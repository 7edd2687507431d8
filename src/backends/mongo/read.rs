//! Reading documents: every document a query finds, as one call, and the
//! fields every collection reads the same way.

use std::future::IntoFuture;

use bson::Document;
use futures::TryStreamExt;
use mongodb::Cursor;

use crate::model::Bsp;
use crate::store::{StoreError, StoreResult};

/// Every document `find` (a `find` or `aggregate` as the driver builds it)
/// returns; a failure at either step is an outage.
pub(super) async fn documents<F>(find: F) -> StoreResult<Vec<Document>>
where
    F: IntoFuture<Output = mongodb::error::Result<Cursor<Document>>>,
{
    let unavailable = |e: mongodb::error::Error| StoreError::Unavailable(e.to_string());
    find.await
        .map_err(unavailable)?
        .try_collect()
        .await
        .map_err(unavailable)
}

/// The provider a document names in `bsp` (the default when absent).
pub(super) fn bsp_of(d: &Document) -> Bsp {
    d.get_str("bsp")
        .ok()
        .and_then(Bsp::parse)
        .unwrap_or_default()
}
