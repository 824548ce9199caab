//! A device connection's inbox: the messages other tasks hand to one connection (commands,
//! stored messages, subscribed events) and the order to end it, in one small allocation.
//!
//! Every transport's connection task owns a [`Receiver`] and its connection table holds the
//! [`Sender`]. It replaces a tokio channel plus a oneshot per connection: a tokio channel
//! allocates a block of 32 slots and its shared state when it is made (about 1 KiB per idle
//! device), where this is one `Arc` of about 100 bytes until something is queued.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

/// What the connection's task is to do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<T, K> {
    /// Send this.
    Item(T),
    /// End the connection: why (`None`: the table forgot it, e.g. at shutdown).
    End(Option<K>),
}

struct State<T, K> {
    items: VecDeque<T>,
    kick: Option<K>,
    /// The receiver is gone: nothing more is taken.
    closed: bool,
    /// The sender is gone: the connection ends once its items are out.
    orphaned: bool,
}

struct Shared<T, K> {
    state: Mutex<State<T, K>>,
    wake: Notify,
    capacity: usize,
}

impl<T, K> Shared<T, K> {
    fn with<R>(&self, f: impl FnOnce(&mut State<T, K>) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The table's side: hands messages to the connection, tells it to end.
pub struct Sender<T, K>(Arc<Shared<T, K>>);

/// The connection task's side.
pub struct Receiver<T, K>(Arc<Shared<T, K>>);

/// An inbox holding at most `capacity` messages.
pub fn inbox<T, K>(capacity: usize) -> (Sender<T, K>, Receiver<T, K>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            kick: None,
            closed: false,
            orphaned: false,
        }),
        wake: Notify::new(),
        capacity,
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl<T, K> Sender<T, K> {
    /// Queues `item`; gives it back if the inbox is full, or its connection is told to end or
    /// gone (whatever it carries is then not lost: the caller still has it).
    pub fn push(&self, item: T) -> Result<(), T> {
        let taken = self.0.with(|s| {
            if s.closed || s.kick.is_some() || s.items.len() >= self.0.capacity {
                return Err(item);
            }
            s.items.push_back(item);
            Ok(())
        });
        if taken.is_ok() {
            self.0.wake.notify_one();
        }
        taken
    }

    /// Tells the connection to end, and why; the first reason given stands.
    pub fn kick(&self, why: K) {
        self.0.with(|s| {
            if s.kick.is_none() {
                s.kick = Some(why);
            }
        });
        self.0.wake.notify_one();
    }
}

impl<T, K> Drop for Sender<T, K> {
    fn drop(&mut self) {
        self.0.with(|s| s.orphaned = true);
        self.0.wake.notify_one();
    }
}

impl<T, K> Receiver<T, K> {
    /// What to do next, if anything: ending comes before queued messages.
    pub fn try_next(&self) -> Option<Next<T, K>> {
        self.0.with(|s| {
            if let Some(k) = s.kick.take() {
                s.closed = true;
                return Some(Next::End(Some(k)));
            }
            if let Some(item) = s.items.pop_front() {
                if s.items.is_empty() {
                    // A burst's buffer is not kept by an idle connection.
                    s.items.shrink_to(4);
                }
                return Some(Next::Item(item));
            }
            if s.orphaned {
                s.closed = true;
                return Some(Next::End(None));
            }
            None
        })
    }

    /// Waits for what to do next (cancel-safe: nothing is taken until it returns).
    pub async fn next(&self) -> Next<T, K> {
        loop {
            // A wake-up between the check and the wait is kept by `Notify` as a permit.
            let woken = self.0.wake.notified();
            if let Some(n) = self.try_next() {
                return n;
            }
            woken.await;
        }
    }
}

impl<T, K> Drop for Receiver<T, K> {
    /// The connection is gone: queued messages are dropped (an outbox receipt dropped
    /// unconfirmed puts its message back) and later ones are refused.
    fn drop(&mut self) {
        let items = self.0.with(|s| {
            s.closed = true;
            std::mem::take(&mut s.items)
        });
        drop(items);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn items_arrive_in_order_and_a_full_inbox_gives_them_back() {
        let (tx, rx) = inbox::<u32, &str>(2);
        assert_eq!(tx.push(1), Ok(()));
        assert_eq!(tx.push(2), Ok(()));
        assert_eq!(tx.push(3), Err(3), "full");
        assert_eq!(rx.next().await, Next::Item(1));
        assert_eq!(tx.push(3), Ok(()));
        assert_eq!(rx.next().await, Next::Item(2));
        assert_eq!(rx.next().await, Next::Item(3));
        assert_eq!(rx.try_next(), None);
    }

    #[tokio::test]
    async fn a_kick_comes_first_and_closes_the_inbox() {
        let (tx, rx) = inbox::<u32, &str>(4);
        tx.push(1).unwrap();
        tx.kick("revoked");
        tx.kick("later");
        assert_eq!(tx.push(2), Err(2), "no more after a kick");
        assert_eq!(rx.next().await, Next::End(Some("revoked")));
        assert_eq!(tx.push(3), Err(3));
    }

    #[tokio::test]
    async fn a_waiting_connection_is_woken() {
        let (tx, rx) = inbox::<u32, &str>(4);
        let waiter = tokio::spawn(async move { rx.next().await });
        tokio::task::yield_now().await;
        tx.push(7).unwrap();
        assert_eq!(waiter.await.unwrap(), Next::Item(7));
    }

    #[tokio::test]
    async fn the_sender_gone_ends_the_connection_after_its_items() {
        let (tx, rx) = inbox::<u32, &str>(4);
        tx.push(1).unwrap();
        drop(tx);
        assert_eq!(rx.next().await, Next::Item(1));
        assert_eq!(rx.next().await, Next::End(None));
    }

    #[test]
    fn a_gone_connection_refuses_and_drops_what_it_held() {
        let held = Arc::new(());
        let (tx, rx) = inbox::<Arc<()>, &str>(4);
        tx.push(held.clone()).unwrap();
        drop(rx);
        assert_eq!(Arc::strong_count(&held), 1, "queued items are dropped");
        assert!(tx.push(held.clone()).is_err());
    }
}
