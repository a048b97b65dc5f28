//! What the operator's log says about clients at the default level: the
//! budget of lines per shard for each kind of client event, so a hostile
//! client (a password or TLS flood, a publish loop on a denied topic)
//! cannot flood the log. Each shard thread has its own token bucket per
//! category; what a bucket holds back is counted and reported in one
//! summary line per category every `WINDOW`, and at shutdown.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use tracing::info;

/// How often held-back lines are summed up.
pub const WINDOW: Duration = Duration::from_secs(10);

/// A kind of client event, each with its own budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// Clients connected and disconnected.
    Connections,
    /// CONNECT refused: authentication or authorization (also tokens and
    /// re-authentication).
    AuthFailures,
    /// TLS handshakes that failed or timed out.
    TlsFailures,
    /// Publishes and subscriptions the client's permissions refused.
    Denials,
    /// Connections closed for a memory limit (partial packets).
    Limits,
}

const CATEGORIES: [Category; 5] = [
    Category::Connections,
    Category::AuthFailures,
    Category::TlsFailures,
    Category::Denials,
    Category::Limits,
];

impl Category {
    fn index(self) -> usize {
        self as usize
    }

    /// Lines a shard may write at once, and per second after that.
    /// Connections get more: a fleet reconnecting after a restart is
    /// legitimate and each line says who came back.
    fn budget(self) -> (u64, u64) {
        match self {
            Category::Connections => (200, 20),
            Category::AuthFailures
            | Category::TlsFailures
            | Category::Denials
            | Category::Limits => (20, 1),
        }
    }

    fn what(self) -> &'static str {
        match self {
            Category::Connections => "client connect/disconnect lines",
            Category::AuthFailures => "refused CONNECTs",
            Category::TlsFailures => "failed TLS handshakes",
            Category::Denials => "denied publishes/subscribes",
            Category::Limits => "connections closed for a memory limit",
        }
    }
}

/// Thousandths of a line, so refill needs no floating point.
const MILLI: u64 = 1000;

#[derive(Debug)]
struct Bucket {
    milli_tokens: u64,
    refilled_at: Instant,
    suppressed: u64,
    /// When the first held-back line of the current window was.
    since: Option<Instant>,
}

/// The buckets of one shard. Deterministic (takes `now`); the shard thread
/// uses it through `allow` / `flush`.
#[derive(Debug)]
pub struct Limiter {
    buckets: [Bucket; 5],
}

/// A summary of held-back lines: `count` of `category` over `over`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suppressed {
    pub category: Category,
    pub count: u64,
    pub over: Duration,
}

impl Limiter {
    pub fn new(now: Instant) -> Limiter {
        Limiter {
            buckets: CATEGORIES.map(|c| Bucket {
                milli_tokens: c.budget().0 * MILLI,
                refilled_at: now,
                suppressed: 0,
                since: None,
            }),
        }
    }

    /// Whether a line of `category` may be written now; if not, it is
    /// counted for the next summary.
    pub fn allow(&mut self, category: Category, now: Instant) -> bool {
        let (burst, per_second) = category.budget();
        let b = &mut self.buckets[category.index()];
        let elapsed = now.saturating_duration_since(b.refilled_at);
        let refill = u64::try_from(elapsed.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_mul(per_second);
        b.milli_tokens = b.milli_tokens.saturating_add(refill).min(burst * MILLI);
        b.refilled_at = now;
        if b.milli_tokens >= MILLI {
            b.milli_tokens -= MILLI;
            return true;
        }
        b.suppressed += 1;
        b.since.get_or_insert(now);
        false
    }

    /// The summaries due at `now` (a window passed since the first line
    /// held back), or all of them when `all` (shutdown).
    pub fn due(&mut self, now: Instant, all: bool) -> Vec<Suppressed> {
        let mut out = Vec::new();
        for category in CATEGORIES {
            let b = &mut self.buckets[category.index()];
            let Some(since) = b.since else { continue };
            let over = now.saturating_duration_since(since);
            if all || over >= WINDOW {
                out.push(Suppressed {
                    category,
                    count: b.suppressed,
                    over,
                });
                b.suppressed = 0;
                b.since = None;
            }
        }
        out
    }
}

thread_local! {
    static LIMITER: RefCell<Limiter> = RefCell::new(Limiter::new(Instant::now()));
}

/// Whether this shard may log a line of `category` now.
pub fn allow(category: Category) -> bool {
    LIMITER.with(|l| l.borrow_mut().allow(category, Instant::now()))
}

/// Writes the summary lines that are due; every shard tick calls this,
/// and shutdown with `all` so nothing held back goes unreported.
pub fn flush(shard: usize, all: bool) {
    let due = LIMITER.with(|l| l.borrow_mut().due(Instant::now(), all));
    for s in due {
        info!(
            shard,
            suppressed = s.count,
            "{} more {} suppressed in the last {} s (log limit per shard)",
            s.count,
            s.category.what(),
            s.over.as_secs().max(1)
        );
    }
}

/// Logs an operator line at info if `category`'s budget allows it:
/// `client_log!(Category::Denials, listener = %l, "publish denied")`.
#[macro_export]
macro_rules! client_log {
    ($category:expr, $($arg:tt)+) => {
        if $crate::oplog::allow($category) {
            ::tracing::info!($($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_gets_the_burst_then_the_rate_and_the_rest_is_counted() {
        let t0 = Instant::now();
        let mut l = Limiter::new(t0);
        let allowed = (0..1000)
            .filter(|_| l.allow(Category::AuthFailures, t0))
            .count();
        assert_eq!(allowed, 20, "the burst");
        // One line a second after that.
        assert!(!l.allow(Category::AuthFailures, t0 + Duration::from_millis(500)));
        assert!(l.allow(Category::AuthFailures, t0 + Duration::from_millis(1000)));
        // Other categories have their own budget.
        assert!(l.allow(Category::TlsFailures, t0));
        assert!(l.due(t0 + Duration::from_secs(9), false).is_empty());
        let due = l.due(t0 + WINDOW, false);
        assert_eq!(
            due,
            [Suppressed {
                category: Category::AuthFailures,
                count: 981,
                over: WINDOW,
            }]
        );
        assert!(l.due(t0 + WINDOW * 2, true).is_empty(), "reported once");
    }

    #[test]
    fn shutdown_reports_what_is_held_back_before_the_window_ends() {
        let t0 = Instant::now();
        let mut l = Limiter::new(t0);
        for _ in 0..25 {
            l.allow(Category::Denials, t0);
        }
        let due = l.due(t0 + Duration::from_secs(1), true);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].count, 5);
    }

    #[test]
    fn a_long_quiet_period_refills_only_up_to_the_burst() {
        let t0 = Instant::now();
        let mut l = Limiter::new(t0);
        let later = t0 + Duration::from_secs(100_000);
        let allowed = (0..1000)
            .filter(|_| l.allow(Category::Connections, later))
            .count();
        assert_eq!(allowed, 200);
    }
}
