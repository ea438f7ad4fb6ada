//! The one way project-vm does many things at once: tokio. Blocking work (a
//! libvirt call, a file, ssh) runs on tokio's blocking pool, at most `limit`
//! at a time; each result comes back in the order of its input, and a worker
//! that panics is that item's failure ([`Panicked`]), never the process's.
//!
//! [`map`] may be called from anywhere, also from a worker of another
//! [`map`] (apply's VM worker creating the VM's two disks at once): inside a
//! runtime it waits on that runtime, elsewhere on the process's shared one.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use tokio::runtime::{Handle, Runtime};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// A worker panicked: its message, for that item's report.
#[derive(Debug, Clone, thiserror::Error)]
#[error("internal error (a worker panicked): {message}")]
pub struct Panicked {
    pub message: String,
}

impl crate::error::Classified for Panicked {
    fn kind(&self) -> crate::error::Kind {
        crate::error::Kind::Failed
    }
}

/// The process's runtime, made on first use.
pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("project-vm")
            .enable_all()
            .build()
            .expect("cannot start the tokio runtime")
    })
}

/// Runs `fut` to its end from synchronous code, on the current runtime when
/// there is one, else on the shared one.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    match Handle::try_current() {
        // A worker thread of a multi-thread runtime, or its blocking pool:
        // block_in_place lets the runtime move other tasks off this thread.
        Ok(h) => tokio::task::block_in_place(|| h.block_on(fut)),
        Err(_) => runtime().block_on(fut),
    }
}

/// `f` over `items`, at most `limit` at once on the blocking pool; results in
/// `items`' order.
pub fn map<T, R, F>(items: Vec<T>, limit: usize, f: F) -> Vec<Result<R, Panicked>>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> R + Send + Sync + 'static,
{
    block_on(map_async(items, limit, f))
}

/// [`map`] for async callers.
pub async fn map_async<T, R, F>(items: Vec<T>, limit: usize, f: F) -> Vec<Result<R, Panicked>>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> R + Send + Sync + 'static,
{
    let f = Arc::new(f);
    let permits = Arc::new(Semaphore::new(limit.max(1)));
    let mut set = JoinSet::new();
    let n = items.len();
    for (i, item) in items.into_iter().enumerate() {
        let (f, permits) = (f.clone(), permits.clone());
        set.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("the semaphore is never closed");
            (i, tokio::task::spawn_blocking(move || f(item)).await)
        });
    }
    let mut out: Vec<Option<Result<R, Panicked>>> = (0..n).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        // The outer task only awaits: it cannot panic, and is never cancelled.
        let (i, result) = joined.expect("a fan-out task ended abnormally");
        out[i] = Some(result.map_err(|e| Panicked { message: panic_message(e) }));
    }
    out.into_iter().map(|r| r.expect("every item has its result")).collect()
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into()),
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn results_keep_their_order_and_a_panic_is_one_items_failure() {
        let out = map(vec![3u64, 0, 1, 2], 4, |n| {
            std::thread::sleep(std::time::Duration::from_millis(n * 10));
            assert_ne!(n, 0, "zero is refused");
            n * 2
        });
        assert_eq!(out[0].as_ref().unwrap(), &6);
        assert!(out[1].as_ref().unwrap_err().message.contains("zero is refused"));
        assert_eq!(out[2].as_ref().unwrap(), &2);
        assert_eq!(out[3].as_ref().unwrap(), &4);
    }

    #[test]
    fn no_more_than_limit_run_at_once() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (r, m) = (running.clone(), most.clone());
        map((0..12).collect(), 3, move |_| {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(5));
            r.fetch_sub(1, Ordering::SeqCst);
        });
        assert!(most.load(Ordering::SeqCst) <= 3);
    }

    #[test]
    fn a_worker_may_fan_out_again() {
        let out = map(vec![1, 2], 2, |n| map(vec![n, n + 10], 2, |m| m + 1));
        let inner: Vec<Vec<i32>> =
            out.into_iter().map(|r| r.unwrap().into_iter().map(|x| x.unwrap()).collect()).collect();
        assert_eq!(inner, vec![vec![2, 12], vec![3, 13]]);
    }

    #[test]
    fn async_code_may_call_it_through_block_on() {
        let v = runtime().block_on(async { tokio::spawn(async { map(vec![1, 2, 3], 2, |x| x * x) }).await.unwrap() });
        assert_eq!(v.into_iter().map(Result::unwrap).collect::<Vec<_>>(), vec![1, 4, 9]);
    }
}
