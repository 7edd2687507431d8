//! The background runtime: the processor and the forwarder run on threads of
//! their own, at a lower CPU priority than the HTTP threads that ack BSPs.
//!
//! Acking is the one latency a BSP sees (it retries, and resends, what is not
//! acked in time); processing and forwarding may lag a burst, since what
//! they work on is already durable. When the CPU is saturated, the kernel
//! gives the acks the CPU first and the background catches up after the
//! burst; when it is not, the priority changes nothing.

/// The background roles' runtime. Dropping it abandons what still runs on
/// it without blocking, so it may be dropped inside async code (a plain
/// `Runtime` panics there, e.g. when the server's future is dropped).
pub struct BackgroundRuntime(Option<tokio::runtime::Runtime>);

impl BackgroundRuntime {
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0
            .as_ref()
            .expect("the runtime is only taken on drop")
            .spawn(task)
    }
}

impl Drop for BackgroundRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Starts the runtime of the background roles. Its threads (workers and
/// blocking pool) run at `nice` (0 = the same priority as ingest; Linux only,
/// where the nice value is per thread).
pub fn runtime(nice: i32) -> std::io::Result<BackgroundRuntime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name("zen-background")
        .enable_all()
        .on_thread_start(move || lower_priority(nice))
        .build()
        .map(|runtime| BackgroundRuntime(Some(runtime)))
}

#[cfg(target_os = "linux")]
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    // `None` is the calling thread: Linux keeps the nice value per thread.
    if let Err(error) = rustix::process::setpriority_process(None, nice) {
        tracing::warn!(
            nice,
            %error,
            "cannot lower the background threads' priority; they run at the ingest priority"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_nice: i32) {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[tokio::test]
    async fn background_threads_run_at_the_given_nice_value() {
        let runtime = super::runtime(7).unwrap();
        let nice = runtime
            .spawn(async {
                let worker = current_nice();
                let blocking = tokio::task::spawn_blocking(current_nice).await.unwrap();
                (worker, blocking)
            })
            .await
            .unwrap();
        assert_eq!(nice, (7, 7));
        // The calling thread (the HTTP side in the gateway) keeps its own.
        assert_ne!(current_nice(), 7);
    }

    #[tokio::test]
    async fn it_can_be_dropped_inside_async_code_with_tasks_still_running() {
        let runtime = super::runtime(0).unwrap();
        let _abandoned = runtime.spawn(std::future::pending::<()>());
        drop(runtime);
    }

    fn current_nice() -> i32 {
        rustix::process::getpriority_process(None).unwrap()
    }
}
