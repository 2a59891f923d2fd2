//! Pipelines sent to Redis and not answered yet, oldest first, each with
//! what its requests wait for. A batch does not wait for the answers of
//! the one before it: on one connection Redis runs and answers pipelines in
//! the order they were sent, so the next batch can go while the last one's
//! answers are on their way (a Redis on another host answers in hundreds of
//! microseconds; waiting for each answer made every request queued meanwhile
//! wait that long more). No I/O here: the answers are futures given to it.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;

/// Pipelines in flight at most; past it the cluster task takes no more
/// requests from the hub's queue until the oldest is answered (each holds
/// at most `BATCH_MAX` requests).
pub(super) const PIPELINES_MAX: usize = 8;

/// A pipeline's answer to come.
pub(super) type Answer<A> = Pin<Box<dyn Future<Output = A> + Send>>;

/// Polls a request's future once, now, and returns it to be awaited
/// later: what it does at its first poll (redis-rs: put the pipeline in its
/// queue to the socket) happens in the order requests are started. Outside
/// tokio's task budget: a spent budget would make that poll return before
/// queueing anything, and a request started after it could go first (found
/// in review).
pub(super) async fn start<A: Send + 'static>(answer: impl Future<Output = A> + Send + 'static) -> Answer<A> {
    let mut answer: Answer<A> = Box::pin(tokio::task::coop::unconstrained(answer));
    match std::future::poll_fn(|cx| Poll::Ready(answer.as_mut().poll(cx))).await {
        Poll::Ready(done) => Box::pin(std::future::ready(done)),
        Poll::Pending => answer,
    }
}

/// The pipelines in flight: `A` is a pipeline's answer, `W` what waits
/// for it.
pub(super) struct InFlight<A, W> {
    answers: FuturesOrdered<Answer<A>>,
    waiting: VecDeque<W>,
}

impl<A, W> InFlight<A, W> {
    pub(super) fn new() -> Self {
        InFlight { answers: FuturesOrdered::new(), waiting: VecDeque::new() }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    pub(super) fn is_full(&self) -> bool {
        self.waiting.len() >= PIPELINES_MAX
    }

    /// A pipeline just sent: `answer` resolves to its answers.
    pub(super) fn push(&mut self, answer: Answer<A>, waiting: W) {
        self.answers.push_back(answer);
        self.waiting.push_back(waiting);
    }

    /// The oldest pipeline's answer with what waits for it, once it has
    /// come (`None` at once when nothing is in flight). Cancel-safe: an
    /// answer is taken from the queue in the same poll that returns it.
    pub(super) async fn next(&mut self) -> Option<(A, W)> {
        let answer = self.answers.next().await?;
        let waiting = self.waiting.pop_front()?;
        Some((answer, waiting))
    }

    /// What still waits, oldest first, its answers given up (the
    /// connection is gone: none of them will come).
    pub(super) fn abandon(&mut self) -> impl Iterator<Item = W> + '_ {
        self.answers = FuturesOrdered::new();
        self.waiting.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn answers_come_out_in_the_order_sent_whatever_order_they_arrive_in() {
        let mut inflight = InFlight::new();
        let (first, first_rx) = oneshot::channel::<u32>();
        let (second, second_rx) = oneshot::channel::<u32>();
        inflight.push(Box::pin(async move { first_rx.await.unwrap_or(0) }), "first");
        inflight.push(Box::pin(async move { second_rx.await.unwrap_or(0) }), "second");
        second.send(2).expect("send");
        // The second answer is there, the first is not: nothing comes out.
        let early = tokio::time::timeout(std::time::Duration::from_millis(20), inflight.next()).await;
        assert!(early.is_err(), "an answer came out before the older one");
        first.send(1).expect("send");
        assert_eq!(inflight.next().await, Some((1, "first")));
        assert_eq!(inflight.next().await, Some((2, "second")));
        assert!(inflight.is_empty());
        assert_eq!(inflight.next().await, None);
    }

    #[tokio::test]
    async fn a_request_started_with_the_task_budget_spent_still_goes_first() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<&str>(8);
        let later = tx.clone();
        // A fresh budget, then all of it spent without yielding.
        tokio::task::yield_now().await;
        for _ in 0..128 {
            tokio::task::coop::consume_budget().await;
        }
        let first = start(async move { tx.send("first").await.is_ok() }).await;
        // Sent after the first was started, before it is awaited.
        assert!(later.send("second").await.is_ok());
        assert!(first.await);
        assert_eq!((rx.recv().await, rx.recv().await), (Some("first"), Some("second")));
    }

    #[tokio::test]
    async fn full_at_the_limit_and_abandoned_waits_come_back_oldest_first() {
        let mut inflight = InFlight::new();
        for i in 0..PIPELINES_MAX {
            assert!(!inflight.is_full());
            inflight.push(Box::pin(std::future::pending::<u32>()), i);
        }
        assert!(inflight.is_full());
        let given_up: Vec<usize> = inflight.abandon().collect();
        assert_eq!(given_up, (0..PIPELINES_MAX).collect::<Vec<_>>());
        assert!(inflight.is_empty() && !inflight.is_full());
        assert_eq!(inflight.next().await, None);
    }
}
