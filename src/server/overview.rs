//! The overview the web page draws: decisions per second over the last [`WINDOW_SECONDS`],
//! by outcome, service and decisive rule, with their latency distribution, kept in a ring
//! of one slot per second. Bounded whatever the traffic: a slot keeps at most
//! [`KEYS_PER_SECOND`] (outcome, service, rule) counts, and counts the rest as `other`.

use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::decision::{Decision, Outcome};

/// Seconds the ring remembers.
pub const WINDOW_SECONDS: usize = 15 * 60;
/// Distinct (outcome, service, rule) counts one second keeps.
pub const KEYS_PER_SECOND: usize = 32;
/// Upper bounds (µs) of the latency buckets; the last bucket takes everything above.
pub const LATENCY_BOUNDS_MICROS: [u64; 11] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000,
];
const BUCKETS: usize = LATENCY_BOUNDS_MICROS.len() + 1;

/// What one key counts: the outcome, the service (none: no service matched) and the rule
/// that decided a denial (none for allows and for denials before the rules).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    outcome: Outcome,
    service: Option<Arc<str>>,
    rule: Option<Arc<str>>,
}

#[derive(Debug, Clone, Default)]
struct Slot {
    /// The Unix second this slot holds; a slot of an older second is stale.
    second: i64,
    allow: u32,
    deny: u32,
    latency: [u32; BUCKETS],
    keys: Vec<(Key, u32)>,
    /// Decisions whose key did not fit.
    other: [u32; 2],
}

/// The ring of the last [`WINDOW_SECONDS`] seconds.
#[derive(Debug)]
pub struct Overview {
    slots: Mutex<Vec<Slot>>,
}

impl Default for Overview {
    fn default() -> Self {
        Self {
            slots: Mutex::new(vec![Slot::default(); WINDOW_SECONDS]),
        }
    }
}

fn bucket(micros: u64) -> usize {
    LATENCY_BOUNDS_MICROS
        .iter()
        .position(|b| micros <= *b)
        .unwrap_or(LATENCY_BOUNDS_MICROS.len())
}

fn same(a: &Option<Arc<str>>, b: &Option<Arc<str>>) -> bool {
    match (a, b) {
        // Names shared with the policy set are the same allocation: no string compare.
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
        (None, None) => true,
        _ => false,
    }
}

impl Overview {
    /// Counts `decision`, made at Unix second `second` in `micros`.
    pub fn record(&self, decision: &Decision, second: i64, micros: u64) {
        let rule = match decision.outcome {
            Outcome::Allow => None,
            Outcome::Deny => decision.decisive().and_then(|e| e.rule.clone()),
        };
        let outcome = decision.outcome;
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut slots[second.rem_euclid(WINDOW_SECONDS as i64) as usize];
        if slot.second > second {
            // A second the ring has already moved past (a clock stepped back): not counted,
            // rather than wiping the newer second.
            return;
        }
        if slot.second != second {
            slot.second = second;
            slot.allow = 0;
            slot.deny = 0;
            slot.latency = [0; BUCKETS];
            slot.keys.clear();
            slot.other = [0; 2];
        }
        match outcome {
            Outcome::Allow => slot.allow += 1,
            Outcome::Deny => slot.deny += 1,
        }
        slot.latency[bucket(micros)] += 1;
        if let Some((_, n)) = slot.keys.iter_mut().find(|(k, _)| {
            k.outcome == outcome && same(&k.service, &decision.service) && same(&k.rule, &rule)
        }) {
            *n += 1;
        } else if slot.keys.len() < KEYS_PER_SECOND {
            slot.keys.push((
                Key {
                    outcome,
                    service: decision.service.clone(),
                    rule,
                },
                1,
            ));
        } else {
            slot.other[usize::from(outcome == Outcome::Deny)] += 1;
        }
    }

    /// The last `seconds` seconds up to `now` (at most [`WINDOW_SECONDS`]), oldest first,
    /// and the `top` keys over them, most decisions first.
    pub fn snapshot(&self, now: i64, seconds: usize, top: usize) -> Snapshot {
        let seconds = seconds.clamp(1, WINDOW_SECONDS);
        let mut per_second = Vec::with_capacity(seconds);
        let mut latency = [0u64; BUCKETS];
        let mut keys: Vec<(Key, u64)> = Vec::new();
        let mut other = [0u64; 2];
        {
            let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            for t in (now - seconds as i64 + 1)..=now {
                let slot = &slots[t.rem_euclid(WINDOW_SECONDS as i64) as usize];
                if slot.second != t {
                    per_second.push(Second {
                        t,
                        allow: 0,
                        deny: 0,
                    });
                    continue;
                }
                per_second.push(Second {
                    t,
                    allow: slot.allow,
                    deny: slot.deny,
                });
                for (total, n) in latency.iter_mut().zip(slot.latency) {
                    *total += u64::from(n);
                }
                for (key, n) in &slot.keys {
                    match keys.iter_mut().find(|(k, _)| k == key) {
                        Some((_, total)) => *total += u64::from(*n),
                        None => keys.push((key.clone(), u64::from(*n))),
                    }
                }
                other[0] += u64::from(slot.other[0]);
                other[1] += u64::from(slot.other[1]);
            }
        }
        keys.sort_by_key(|k| std::cmp::Reverse(k.1));
        let top_of = |outcome: Outcome| -> Vec<Count> {
            keys.iter()
                .filter(|(k, _)| k.outcome == outcome)
                .take(top)
                .map(|(k, n)| Count {
                    service: k.service.as_deref().map(str::to_owned),
                    rule: k.rule.as_deref().map(str::to_owned),
                    count: *n,
                })
                .collect()
        };
        // Services by denials, whatever the rule.
        let mut services: Vec<Count> = Vec::new();
        for (k, n) in keys.iter().filter(|(k, _)| k.outcome == Outcome::Deny) {
            match services
                .iter_mut()
                .find(|c| c.service.as_deref() == k.service.as_deref())
            {
                Some(c) => c.count += n,
                None => services.push(Count {
                    service: k.service.as_deref().map(str::to_owned),
                    rule: None,
                    count: *n,
                }),
            }
        }
        services.sort_by_key(|c| std::cmp::Reverse(c.count));
        services.truncate(top);
        Snapshot {
            now,
            seconds: per_second,
            denying_rules: top_of(Outcome::Deny),
            denying_services: services,
            latency: Latency {
                bounds_micros: LATENCY_BOUNDS_MICROS.to_vec(),
                counts: latency.to_vec(),
            },
            uncounted: Uncounted {
                allow: other[0],
                deny: other[1],
            },
        }
    }
}

/// The overview of a window, as `/v1/overview` serves it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub now: i64,
    pub seconds: Vec<Second>,
    /// Rules (with their service) that decided the most denials.
    pub denying_rules: Vec<Count>,
    pub denying_services: Vec<Count>,
    pub latency: Latency,
    /// Decisions in the window whose (service, rule) did not fit their second's slot: in
    /// the per-second counts, not in the lists.
    pub uncounted: Uncounted,
}

#[derive(Debug, Serialize)]
pub struct Second {
    pub t: i64,
    pub allow: u32,
    pub deny: u32,
}

#[derive(Debug, Serialize)]
pub struct Count {
    pub service: Option<String>,
    pub rule: Option<String>,
    pub count: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    /// Upper bounds of the buckets but the last, which is everything above.
    pub bounds_micros: Vec<u64>,
    pub counts: Vec<u64>,
}

#[derive(Debug, Serialize)]
pub struct Uncounted {
    pub allow: u64,
    pub deny: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::fixtures::{allowed, unauthorised};

    #[test]
    fn seconds_count_by_outcome_and_old_seconds_are_forgotten() {
        let overview = Overview::default();
        let now = 1_800_000_000;
        overview.record(&allowed(1, "alice"), now - 2, 5);
        overview.record(&allowed(2, "bob"), now, 30);
        overview.record(&unauthorised(3), now, 30_000_000);
        // As long ago as the ring is long: the same slot as `now`, neither counted with it
        // nor wiping it.
        overview.record(&unauthorised(4), now - WINDOW_SECONDS as i64, 1);
        let s = overview.snapshot(now, 3, 5);
        let counts: Vec<(i64, u32, u32)> =
            s.seconds.iter().map(|x| (x.t, x.allow, x.deny)).collect();
        assert_eq!(counts, vec![(now - 2, 1, 0), (now - 1, 0, 0), (now, 1, 1)]);
        assert_eq!(s.latency.counts.iter().sum::<u64>(), 3);
        assert_eq!(s.latency.counts[0], 1, "5 µs");
        assert_eq!(s.latency.counts[2], 1, "30 µs");
        assert_eq!(*s.latency.counts.last().unwrap(), 1, "30 s");
        assert_eq!(s.denying_services.len(), 1);
        assert_eq!(s.denying_services[0].count, 1);
        // A window longer than the ring is the ring.
        assert_eq!(
            overview.snapshot(now, usize::MAX, 5).seconds.len(),
            WINDOW_SECONDS
        );
    }

    #[test]
    fn a_second_keeps_a_bounded_number_of_keys_and_counts_the_rest() {
        let overview = Overview::default();
        let now = 1_800_000_000;
        for i in 0..(KEYS_PER_SECOND + 10) {
            let mut d = unauthorised(i);
            d.service = Some(Arc::from(format!("service-{i}")));
            overview.record(&d, now, 1);
        }
        let s = overview.snapshot(now, 1, 100);
        assert_eq!(s.seconds[0].deny as usize, KEYS_PER_SECOND + 10);
        assert_eq!(s.denying_services.len(), KEYS_PER_SECOND);
        assert_eq!(s.uncounted.deny, 10);
    }
}
