//! One conformance suite for every `ForwardQueue` backend: the embedded
//! queue and RabbitMQ (the real broker): receive and complete, retry after a
//! delay, the DLQ and its replay.

use std::sync::Arc;
use std::time::Duration;

use zen_gateway::backends::rabbitmq::{RabbitForwardQueue, RabbitInbox, RabbitOptions};
use zen_gateway::backends::sqlite::{SqliteDb, SqliteForwardQueue, SqliteOptions, Synchronous};
use zen_gateway::forwarding::{ForwardJob, ForwardQueue, JobTag, ReplayFilter};

use crate::services;

struct Backend {
    queue: Arc<dyn ForwardQueue>,
    _dir: Option<tempfile::TempDir>,
    broker: Option<Arc<RabbitInbox>>,
}

impl Backend {
    fn sqlite() -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(&SqliteOptions {
            path: dir.path().join("zen.db"),
            synchronous: Synchronous::Normal,
            queue_capacity: 1000,
            max_batch: 64,
            readers: 2,
        })
        .unwrap();
        Backend {
            queue: Arc::new(SqliteForwardQueue::new(db)),
            _dir: Some(dir),
            broker: None,
        }
    }

    async fn rabbit() -> Option<Backend> {
        let broker = RabbitInbox::start(RabbitOptions {
            url: services::rabbitmq_url()?,
            prefix: services::unique_prefix(),
            consume: false,
            prefetch: 16,
            publish_channels: 1,
            retry_delays_ms: vec![300],
            forward_consume: true,
            forward_prefetch: 16,
            providers: zen_gateway::providers::Providers::new(),
            queue_type: Default::default(),
        });
        assert!(broker.wait_connected(Duration::from_secs(15)).await);
        Some(Backend {
            queue: Arc::new(RabbitForwardQueue::new(broker.clone())),
            _dir: None,
            broker: Some(broker),
        })
    }

    async fn finish(self) {
        if let Some(b) = self.broker {
            b.close().await;
        }
    }
}

fn job(n: u32) -> ForwardJob {
    ForwardJob {
        delivery_log_id: format!("{:024x}", 0xabc000 + n as u64 + rand_tag()),
        project_owner_id: "o".into(),
        webhook_id: "w".into(),
        webhook_url: "https://example.com/hook".into(),
        shared_secret: None,
        event_type: "message.delivered".into(),
        event_id: format!("e{n}"),
        payload: serde_json::json!({"n": n}),
        timestamp: 1_749_540_000_000,
        attempt_count: 0,
        message: None,
        parked_since: None,
        v: 1,
        traceparent: None,
    }
}

/// A per-test offset, so that ids never meet across tests on one broker.
fn rand_tag() -> u64 {
    (uuid::Uuid::new_v4().as_u128() as u64) & 0xffff_ffff_0000_0000
}

async fn receive_n(q: &dyn ForwardQueue, n: usize, within: Duration) -> Vec<(JobTag, ForwardJob)> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while got.len() < n && tokio::time::Instant::now() < deadline {
        got.extend(
            q.receive(n - got.len(), Duration::from_millis(200))
                .await
                .unwrap(),
        );
    }
    got
}

async fn eventually(f: impl AsyncFnMut() -> bool) -> bool {
    crate::helpers::eventually_within(Duration::from_secs(5), f).await
}

mod cases {
    use super::*;

    pub async fn jobs_are_received_once_and_completed(q: &dyn ForwardQueue) {
        let jobs: Vec<ForwardJob> = (0..3).map(job).collect();
        q.enqueue(&jobs).await.unwrap();
        let mut got = receive_n(q, 3, Duration::from_secs(10)).await;
        assert_eq!(got.len(), 3);
        got.sort_by(|a, b| a.1.event_id.cmp(&b.1.event_id));
        for ((_, j), want) in got.iter().zip(&jobs) {
            assert_eq!(j, want);
        }
        assert!(
            q.receive(10, Duration::from_millis(300))
                .await
                .unwrap()
                .is_empty()
        );
        for (tag, _) in &got {
            q.complete(tag).await.unwrap();
        }
        assert!(eventually(async || q.depth().await.unwrap() == 0).await);
        assert!(
            q.receive(10, Duration::from_millis(300))
                .await
                .unwrap()
                .is_empty()
        );
    }

    pub async fn a_rescheduled_job_comes_back_after_its_delay(q: &dyn ForwardQueue) {
        q.enqueue(&[job(1)]).await.unwrap();
        let got = receive_n(q, 1, Duration::from_secs(10)).await;
        let (tag, mut j) = got.into_iter().next().unwrap();
        j.attempt_count = 1;
        let at = std::time::Instant::now();
        q.reschedule(&tag, &j, Duration::from_millis(300))
            .await
            .unwrap();
        let back = receive_n(q, 1, Duration::from_secs(10)).await;
        assert!(
            at.elapsed() >= Duration::from_millis(250),
            "{:?}",
            at.elapsed()
        );
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].1.attempt_count, 1);
        assert_eq!(back[0].1.delivery_log_id, j.delivery_log_id);
        q.complete(&back[0].0).await.unwrap();
    }

    pub async fn dead_jobs_are_listed_and_replayed_with_fresh_attempts(q: &dyn ForwardQueue) {
        let jobs = [job(1), job(2)];
        q.enqueue(&jobs).await.unwrap();
        let got = receive_n(q, 2, Duration::from_secs(10)).await;
        for (tag, j) in &got {
            let mut j = j.clone();
            j.attempt_count = 3;
            q.dead_letter(tag, &j, "gave up after 3 attempts")
                .await
                .unwrap();
        }
        assert!(eventually(async || q.dead_depth().await.unwrap() == 2).await);
        let dead = q.list_dead(10).await.unwrap();
        assert_eq!(dead.len(), 2);
        for d in &dead {
            assert_eq!(d.reason, "gave up after 3 attempts");
            assert_eq!(d.job.attempt_count, 3);
            assert_eq!(d.job.shared_secret, None);
        }
        let first = jobs[0].delivery_log_id.clone();
        assert_eq!(
            q.replay_dead(&ReplayFilter::ids(vec![first.clone()]))
                .await
                .unwrap(),
            1
        );
        let back = receive_n(q, 1, Duration::from_secs(10)).await;
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].1.delivery_log_id, first);
        assert_eq!(back[0].1.attempt_count, 0, "a replay starts over");
        q.complete(&back[0].0).await.unwrap();
        assert!(eventually(async || q.dead_depth().await.unwrap() == 1).await);
        assert_eq!(q.replay_dead(&ReplayFilter::default()).await.unwrap(), 1);
        let back = receive_n(q, 1, Duration::from_secs(10)).await;
        assert_eq!(back[0].1.delivery_log_id, jobs[1].delivery_log_id);
        q.complete(&back[0].0).await.unwrap();
        assert!(eventually(async || q.dead_depth().await.unwrap() == 0).await);
    }

    /// A replay narrowed to one webhook, or to when the deliveries died,
    /// puts back only those.
    pub async fn replays_by_webhook_and_time_range(q: &dyn ForwardQueue) {
        let mut a = job(31);
        a.webhook_id = "hook-a".into();
        let mut b = job(32);
        b.webhook_id = "hook-b".into();
        q.enqueue(&[a.clone(), b.clone()]).await.unwrap();
        let got = receive_n(q, 2, Duration::from_secs(10)).await;
        let (first, second) = if got[0].1.webhook_id == "hook-a" {
            (&got[0], &got[1])
        } else {
            (&got[1], &got[0])
        };
        q.dead_letter(&first.0, &first.1, "gave up").await.unwrap();
        assert!(eventually(async || q.dead_depth().await.unwrap() == 1).await);
        let between = chrono::Utc::now() + chrono::Duration::milliseconds(5);
        crate::helpers::wait_past(between).await;
        q.dead_letter(&second.0, &second.1, "gave up")
            .await
            .unwrap();
        assert!(eventually(async || q.dead_depth().await.unwrap() == 2).await);
        // Died after `between`: only hook-b's.
        let since = ReplayFilter {
            since: Some(between),
            ..Default::default()
        };
        assert_eq!(q.replay_dead(&since).await.unwrap(), 1);
        let back = receive_n(q, 1, Duration::from_secs(10)).await;
        assert_eq!(back[0].1.webhook_id, "hook-b");
        q.complete(&back[0].0).await.unwrap();
        // Another webhook's: nothing; its own: the one left.
        let other = ReplayFilter {
            webhook_id: Some("hook-b".into()),
            ..Default::default()
        };
        assert_eq!(q.replay_dead(&other).await.unwrap(), 0);
        let own = ReplayFilter {
            webhook_id: Some("hook-a".into()),
            until: Some(between),
            ..Default::default()
        };
        assert_eq!(q.replay_dead(&own).await.unwrap(), 1);
        let back = receive_n(q, 1, Duration::from_secs(10)).await;
        assert_eq!(back[0].1.webhook_id, "hook-a");
        q.complete(&back[0].0).await.unwrap();
        assert!(eventually(async || q.dead_depth().await.unwrap() == 0).await);
    }

    /// A replay larger than one backend batch (500) puts back every match,
    /// by filter and by a long list of ids.
    pub async fn a_replay_larger_than_a_batch_puts_back_every_match(q: &dyn ForwardQueue) {
        let jobs: Vec<ForwardJob> = (0..1100)
            .map(|n| {
                let mut j = job(1000 + n);
                j.webhook_id = if n % 2 == 0 { "big-a" } else { "big-b" }.into();
                j
            })
            .collect();
        q.enqueue(&jobs).await.unwrap();
        // In steps: a broker hands out no more than its prefetch unacked.
        let mut dead = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while dead < jobs.len() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{dead} of {} dead-lettered",
                jobs.len()
            );
            let got = q.receive(50, Duration::from_millis(200)).await.unwrap();
            for (tag, j) in &got {
                q.dead_letter(tag, j, "gave up").await.unwrap();
            }
            dead += got.len();
        }
        assert!(eventually(async || q.dead_depth().await.unwrap() == 1100).await);
        let a = ReplayFilter {
            webhook_id: Some("big-a".into()),
            ..Default::default()
        };
        assert_eq!(q.replay_dead(&a).await.unwrap(), 550);
        let mut ids: Vec<String> = jobs
            .iter()
            .filter(|j| j.webhook_id == "big-b")
            .map(|j| j.delivery_log_id.clone())
            .collect();
        ids.extend((0..50).map(|n| format!("{n:024x}")));
        assert_eq!(q.replay_dead(&ReplayFilter::ids(ids)).await.unwrap(), 550);
        let mut back = std::collections::HashSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while back.len() < 1100 && tokio::time::Instant::now() < deadline {
            let got = q.receive(50, Duration::from_millis(200)).await.unwrap();
            for (tag, j) in &got {
                back.insert(j.delivery_log_id.clone());
                q.complete(tag).await.unwrap();
            }
        }
        assert_eq!(back.len(), 1100, "every dead job came back");
        assert!(eventually(async || q.dead_depth().await.unwrap() == 0).await);
    }

    /// Retention takes the dead jobs that died before the cutoff, oldest
    /// first, and leaves the rest for replay.
    pub async fn retention_prunes_dead_jobs_older_than_the_cutoff(q: &dyn ForwardQueue) {
        q.enqueue(&[job(11), job(12)]).await.unwrap();
        let got = receive_n(q, 2, Duration::from_secs(10)).await;
        q.dead_letter(&got[0].0, &got[0].1, "old").await.unwrap();
        assert!(eventually(async || q.dead_depth().await.unwrap() == 1).await);
        let cutoff = chrono::Utc::now() + chrono::Duration::milliseconds(5);
        crate::helpers::wait_past(cutoff).await;
        q.dead_letter(&got[1].0, &got[1].1, "new").await.unwrap();
        assert!(eventually(async || q.dead_depth().await.unwrap() == 2).await);
        assert_eq!(q.prune_dead(cutoff, 100).await.unwrap(), 1);
        assert!(eventually(async || q.dead_depth().await.unwrap() == 1).await);
        let left = q.list_dead(10).await.unwrap();
        assert_eq!(left[0].reason, "new");
        assert_eq!(q.prune_dead(cutoff, 100).await.unwrap(), 0);
        assert_eq!(q.replay_dead(&ReplayFilter::default()).await.unwrap(), 1);
        let back = receive_n(q, 1, Duration::from_secs(10)).await;
        q.complete(&back[0].0).await.unwrap();
    }
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let b = super::Backend::sqlite();
                    super::cases::$case(&*b.queue).await;
                    b.finish().await;
                }
            )*
        }
        mod rabbitmq {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(b) = super::Backend::rabbit().await else { return };
                    super::cases::$case(&*b.queue).await;
                    b.finish().await;
                }
            )*
        }
    };
}

suite!(
    jobs_are_received_once_and_completed,
    a_rescheduled_job_comes_back_after_its_delay,
    dead_jobs_are_listed_and_replayed_with_fresh_attempts,
    a_replay_larger_than_a_batch_puts_back_every_match,
    retention_prunes_dead_jobs_older_than_the_cutoff,
    replays_by_webhook_and_time_range,
);
