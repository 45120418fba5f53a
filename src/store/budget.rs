//! What one user may make others cost: groups created and users named that did not exist
//! before (by a message or a group request) are counted per user in an hourly window, and
//! refused past a budget. Without it, one account could invent a million users in seconds,
//! each a row, an inbox and memory in every cache that holds users.
//!
//! The writer charges a job before its first write, so a refusal writes nothing. The count
//! is kept for the writer's life, not in the database: a restart forgets it, which costs
//! at most one more window's worth. A batch that rolls back and is retried job by job may
//! charge a job twice; that only errs on the side of refusing.

use std::collections::HashMap;

use super::error::StoreError;

/// How long a budget lasts from a user's first charge, in ms.
const WINDOW_MS: u64 = 3_600_000;

/// Past this many users with a running window, expired ones are dropped before a new one
/// is added, so the map holds only users active within the hour.
const PRUNE_AT: usize = 4096;

/// Groups one user may create and new users they may name per hour; 0 is no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub groups_per_hour: u32,
    pub new_users_per_hour: u32,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            groups_per_hour: 60,
            new_users_per_hour: 5000,
        }
    }
}

#[derive(Clone, Copy)]
struct Spent {
    since: u64,
    groups: u32,
    new_users: u32,
}

#[derive(Default)]
pub(crate) struct Budgets {
    budget: Budget,
    spent: HashMap<String, Spent>,
}

impl Budgets {
    pub(crate) fn new(budget: Budget) -> Budgets {
        Budgets {
            budget,
            spent: HashMap::new(),
        }
    }

    /// Charges `user` for `groups` groups and `new_users` new users at `now` (wall ms), or
    /// refuses without charging anything when either would pass its budget.
    pub(crate) fn charge(
        &mut self,
        user: &str,
        now: u64,
        groups: u32,
        new_users: u32,
    ) -> Result<(), StoreError> {
        if groups == 0 && new_users == 0 {
            return Ok(());
        }
        if self.spent.len() >= PRUNE_AT && !self.spent.contains_key(user) {
            self.spent
                .retain(|_, s| now.saturating_sub(s.since) < WINDOW_MS);
        }
        let fresh = Spent {
            since: now,
            groups: 0,
            new_users: 0,
        };
        let spent = self.spent.entry(user.to_owned()).or_insert(fresh);
        if now.saturating_sub(spent.since) >= WINDOW_MS {
            *spent = fresh;
        }
        let over =
            |limit: u32, used: u32, more: u32| limit > 0 && used.saturating_add(more) > limit;
        if over(self.budget.groups_per_hour, spent.groups, groups) {
            return Err(StoreError::OverBudget("too many groups created this hour"));
        }
        if over(self.budget.new_users_per_hour, spent.new_users, new_users) {
            return Err(StoreError::OverBudget("too many new users named this hour"));
        }
        spent.groups += groups;
        spent.new_users += new_users;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn each_budget_refuses_past_its_limit_per_user_and_refills_after_the_window() {
        let mut budgets = Budgets::new(Budget {
            groups_per_hour: 2,
            new_users_per_hour: 10,
        });
        assert_eq!(budgets.charge("ann", T0, 1, 6), Ok(()));
        assert!(budgets.charge("ann", T0, 1, 5).is_err(), "16 new users");
        assert_eq!(
            budgets.charge("ann", T0, 1, 4),
            Ok(()),
            "a refusal charged nothing"
        );
        assert!(
            budgets.charge("ann", T0 + 1, 1, 0).is_err(),
            "a third group"
        );
        assert_eq!(
            budgets.charge("ann", T0, 0, 0),
            Ok(()),
            "nothing new is free"
        );
        assert_eq!(budgets.charge("bob", T0, 2, 10), Ok(()), "per user");
        assert_eq!(budgets.charge("ann", T0 + WINDOW_MS, 2, 10), Ok(()));
    }

    #[test]
    fn zero_is_no_limit_and_expired_windows_are_dropped() {
        let mut budgets = Budgets::new(Budget {
            groups_per_hour: 0,
            new_users_per_hour: 0,
        });
        assert_eq!(budgets.charge("ann", T0, 1000, 1_000_000), Ok(()));
        let mut budgets = Budgets::new(Budget::default());
        for i in 0..PRUNE_AT {
            budgets.charge(&format!("u{i}"), T0, 1, 0).unwrap();
        }
        budgets.charge("late", T0 + WINDOW_MS, 1, 0).unwrap();
        assert_eq!(budgets.spent.len(), 1, "only the running window is kept");
    }
}
