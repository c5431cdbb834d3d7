//! The policy sets that the store's records were decided with, held within a budget, so that
//! a record that keeps only what its decision was made on can be decided again when it is
//! read (see [`Engine::rebuild`](crate::decision::Engine::rebuild)). A record whose policy set
//! is no longer held still shows what it kept itself.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use arc_swap::ArcSwapOption;

use crate::policy::PolicySet;

/// Policy sets held at most: the newest and the three before it. Records outlive reloads
/// only by as many decisions as the store holds, so older sets are rarely read; holding a
/// set costs what the running one does.
pub const HELD_REVISIONS: usize = 4;

/// One policy set as records refer to it; it lets go of the set when the store's budget
/// does.
#[derive(Debug)]
pub struct Revision {
    set: RwLock<Option<Arc<PolicySet>>>,
    /// The set's address, to know it again while it is held (and only then: an address can
    /// be reused once the set is freed).
    addr: usize,
}

impl Revision {
    /// The policy set, while it is held.
    pub fn set(&self) -> Option<Arc<PolicySet>> {
        self.set
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn release(&self) {
        *self.set.write().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

fn addr(set: &Arc<PolicySet>) -> usize {
    Arc::as_ptr(set) as usize
}

/// The revisions held, newest last, and the one records were last made with.
#[derive(Debug, Default)]
pub struct Revisions {
    /// Read without a lock by every record: it is nearly always the one wanted.
    last: ArcSwapOption<Revision>,
    held: Mutex<VecDeque<Arc<Revision>>>,
}

impl Revisions {
    /// The revision of `set`, held from now on if it was not (letting go of the oldest
    /// beyond [`HELD_REVISIONS`]).
    pub fn of(&self, set: &Arc<PolicySet>) -> Arc<Revision> {
        if let Some(last) = &*self.last.load()
            // `last` is held, so its set is alive and its address still its own.
            && last.addr == addr(set)
        {
            return Arc::clone(last);
        }
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let revision = match held.iter().find(|r| r.addr == addr(set)) {
            Some(r) => Arc::clone(r),
            None => {
                let r = Arc::new(Revision {
                    set: RwLock::new(Some(Arc::clone(set))),
                    addr: addr(set),
                });
                held.push_back(Arc::clone(&r));
                while held.len() > HELD_REVISIONS {
                    if let Some(oldest) = held.pop_front() {
                        oldest.release();
                    }
                }
                r
            }
        };
        // Under the lock, so that `last` is always one of `held`.
        self.last.store(Some(Arc::clone(&revision)));
        revision
    }

    /// Policy sets held now.
    pub fn held(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::trace::fixtures::policy_set as set;

    #[test]
    fn a_set_is_held_until_newer_ones_push_it_past_the_budget() {
        let revisions = Revisions::default();
        let first = set();
        let r1 = revisions.of(&first);
        assert!(
            Arc::ptr_eq(&r1, &revisions.of(&first)),
            "the same set, the same revision"
        );
        let later: Vec<_> = (0..HELD_REVISIONS).map(|_| set()).collect();
        for (i, s) in later.iter().enumerate() {
            revisions.of(s);
            let still = i + 2 <= HELD_REVISIONS;
            assert_eq!(r1.set().is_some(), still, "after {} newer sets", i + 1);
        }
        assert_eq!(revisions.held(), HELD_REVISIONS);
        // An older set asked for again (a decision made just before a reload) comes back as
        // a revision of its own; the one released stays released.
        let again = revisions.of(&first);
        assert!(!Arc::ptr_eq(&again, &r1));
        assert!(again.set().is_some() && r1.set().is_none());
        assert_eq!(revisions.held(), HELD_REVISIONS);
    }
}
