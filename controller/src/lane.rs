//! A lane: a runtime of its own, on threads of their own CPU priority, for work that must not
//! share the main runtime's run queue.
//!
//! A phase released to a fleet wakes thousands of held polls at once, and each builds and
//! signs a plan. On the main runtime those tasks fill its run queue, and a report that
//! arrives during the wave waits behind all of them (its p99 went from ~50 ms to 155 ms in a
//! 19,000-host fan-out). On the plan lane (lower priority) the wave still gets every core the
//! main runtime leaves idle, but the kernel runs the main runtime's threads first whenever
//! both want the CPU, so reports, TLS and HTTP/2 framing are not queued behind plan builds.
//! The engine's writer lane (higher priority where the process may raise it) holds the write
//! transactions that others wait for (report groups, ticks, heartbeat flushes): every query
//! of a transaction is a round trip to SQLite's connection thread, and on the main runtime
//! each resumption queued behind the woken polls while the writers' turn was held.
//!
//! The priority is a nice value of the lane's own threads (Linux applies `setpriority` on a
//! thread id to that thread only), relative to the rest of the process.

use std::future::Future;

/// Why a lane could not run a task.
#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    #[error("the {0} lane is shutting down")]
    Stopped(&'static str),
}

pub struct Lane {
    name: &'static str,
    handle: tokio::runtime::Handle,
    /// Taken on drop: a runtime dropped from async code must not block on its threads.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Lane {
    /// Starts `threads` worker threads named `berth-{name}` at `nice` steps from the
    /// process's own nice value: above 0 lowers their priority, 0 keeps it, below 0 raises
    /// it where the process may (root, `CAP_SYS_NICE`, or an `RLIMIT_NICE` such as
    /// systemd's `LimitNICE=`; elsewhere the threads keep the process's priority).
    pub fn start(name: &'static str, threads: usize, nice: i32) -> std::io::Result<Lane> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(format!("berth-{name}"))
            .on_thread_start(move || {
                if nice != 0 {
                    shift_priority(name, nice)
                }
            })
            .enable_all()
            .build()?;
        Ok(Lane {
            name,
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    /// Runs `task` on the lane and waits for its output. A panic in the task is resumed
    /// here; dropping the returned future does not cancel the task.
    pub async fn run<F>(&self, task: F) -> Result<F::Output, LaneError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.handle.spawn(task).await {
            Ok(out) => Ok(out),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(LaneError::Stopped(self.name)),
        }
    }

    /// Starts `task` on the lane without waiting for it; it runs to its end even if the
    /// handle is dropped.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Moves the calling thread's nice value by `nice` steps (the nice value is per thread on
/// Linux). A refusal only costs the priority, so it is logged, not fatal.
fn shift_priority(lane: &'static str, nice: i32) {
    let tid = rustix::thread::gettid();
    let current = rustix::process::getpriority_process(Some(tid)).unwrap_or(0);
    let target = (current + nice).clamp(-20, 19);
    if let Err(e) = rustix::process::setpriority_process(Some(tid), target) {
        tracing::warn!(
            lane,
            nice = target,
            error = %e,
            "cannot change the lane's thread priority; it runs at the process's"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice_of(tid: rustix::process::Pid) -> i32 {
        rustix::process::getpriority_process(Some(tid)).expect("getpriority")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn tasks_run_on_lower_priority_threads_and_the_caller_keeps_its_own() {
        let lane = Lane::start("test", 1, 7).expect("lane");
        let mine = nice_of(rustix::thread::gettid());
        let (theirs, name) = lane
            .run(async {
                (
                    nice_of(rustix::thread::gettid()),
                    std::thread::current().name().map(str::to_string),
                )
            })
            .await
            .expect("ran");
        assert_eq!(theirs, (mine + 7).min(19), "the lane's thread is niced");
        assert_eq!(name.as_deref(), Some("berth-test"));
        assert_eq!(
            nice_of(rustix::thread::gettid()),
            mine,
            "the caller's thread is not"
        );
    }

    #[tokio::test]
    async fn a_stopped_lane_says_so_and_a_panic_reaches_the_caller() {
        let lane = Lane::start("test", 1, 1).expect("lane");
        let caught = tokio::spawn(async move {
            let _ = lane.run(async { panic!("inside the lane") }).await;
        })
        .await
        .expect_err("the panic is resumed in the caller");
        assert!(caught.is_panic());

        let mut lane = Lane::start("test", 1, 1).expect("lane");
        if let Some(rt) = lane.runtime.take() {
            rt.shutdown_background();
        }
        let err = lane.run(async { 1 }).await.expect_err("stopped");
        assert_eq!(err.to_string(), "the test lane is shutting down");
    }

    #[tokio::test]
    async fn a_raise_takes_where_the_process_may_raise_and_else_keeps_its_priority() {
        let lane = Lane::start("raise", 1, -3).expect("lane");
        let base = rustix::process::getpriority_process(None).expect("getpriority");
        let theirs = lane
            .run(async { nice_of(rustix::thread::gettid()) })
            .await
            .expect("ran");
        // Root may always raise (CAP_SYS_NICE); others only within RLIMIT_NICE.
        let raised = (base - 3).max(-20);
        let may = rustix::process::geteuid().is_root()
            || rustix::process::getrlimit(rustix::process::Resource::Nice)
                .current
                .is_some_and(|l| 20 - l as i32 <= raised);
        let want = if may { raised } else { base };
        assert_eq!(theirs, want);
    }

    #[tokio::test]
    async fn a_spawned_task_runs_on_the_lane_to_its_end_when_its_handle_is_dropped() {
        let lane = Lane::start("writer", 1, 0).expect("lane");
        let (tx, rx) = tokio::sync::oneshot::channel();
        drop(lane.spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let _ = tx.send((
                std::thread::current().name().map(str::to_string),
                nice_of(rustix::thread::gettid()),
            ));
        }));
        let (name, nice) = rx.await.expect("the task finished");
        assert_eq!(name.as_deref(), Some("berth-writer"));
        assert_eq!(
            nice,
            nice_of(rustix::thread::gettid()),
            "nice 0 keeps the process's priority"
        );
    }
}
