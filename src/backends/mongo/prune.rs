//! Retention's deletes on MongoDB: app-side, oldest first, in small
//! batches (the test wire server has no TTL indexes, and a TTL index would
//! leave a message's lookup keys behind).

use bson::{Bson, Document, doc};
use chrono::{DateTime, Utc};
use mongodb::Collection;

use super::read::documents;
use crate::store::StoreError;
use crate::store::StoreResult;

fn unavailable(e: mongodb::error::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Deletes up to `limit` of the oldest documents of `coll` whose date
/// `field` is before `before`: app-side, in small batches, since the test
/// wire server has no TTL indexes. Returns how many went.
pub(crate) async fn prune_oldest(
    coll: &Collection<Document>, field: &str, before: DateTime<Utc>, limit: usize,
) -> StoreResult<u64> {
    prune_oldest_where(coll, field, before, limit, Document::new()).await
}

/// [`prune_oldest`] among the documents that also match `filter`.
pub(crate) async fn prune_oldest_where(
    coll: &Collection<Document>, field: &str, before: DateTime<Utc>, limit: usize, filter: Document,
) -> StoreResult<u64> {
    let ids: Vec<Bson> = oldest_ids(coll, field, before, limit, filter).await?;
    if ids.is_empty() {
        return Ok(0);
    }
    let r = coll
        .delete_many(doc! {"_id": {"$in": ids}})
        .await
        .map_err(unavailable)?;
    Ok(r.deleted_count)
}

async fn oldest_ids(
    coll: &Collection<Document>, field: &str, before: DateTime<Utc>, limit: usize,
    mut filter: Document,
) -> StoreResult<Vec<Bson>> {
    filter.insert(field, doc! {"$lt": bson::DateTime::from_chrono(before)});
    let docs: Vec<Document> = documents(
        coll.find(filter)
            .sort(doc! {field: 1})
            .limit(limit as i64)
            .projection(doc! {"_id": 1}),
    )
    .await?;
    Ok(docs
        .into_iter()
        .filter_map(|d| d.get("_id").cloned())
        .collect())
}
