//! The breaker's states and the packed word that holds state, generation and half-open permits.

use std::fmt;

/// The state of a circuit breaker.
///
/// ```
/// use tower_rampart::circuit_breaker::State;
///
/// assert!(State::Closed.admits());
/// assert!(!State::ForcedOpen.admits());
/// assert_eq!(State::HalfOpen.to_string(), "half_open");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls pass and their outcomes are recorded.
    Closed,
    /// Calls are rejected until the open duration has passed.
    Open,
    /// A limited number of probe calls decide whether to close or open again.
    HalfOpen,
    /// Operator state: every call is rejected, and the breaker never probes.
    ForcedOpen,
    /// Operator state: every call passes, nothing is recorded.
    Disabled,
    /// Operator state: every call passes and is recorded, but the breaker never changes state.
    MetricsOnly,
}

impl State {
    /// Every state, in gauge order.
    pub const ALL: [State; 6] = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::ForcedOpen,
        State::Disabled,
        State::MetricsOnly,
    ];

    /// Whether calls are let through in this state without condition.
    pub const fn admits(self) -> bool {
        matches!(self, State::Closed | State::Disabled | State::MetricsOnly)
    }

    /// A stable lower-case name, used as a metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
            State::Disabled => "disabled",
            State::MetricsOnly => "metrics_only",
        }
    }

    const fn code(self) -> u64 {
        self as u64
    }

    #[inline]
    fn from_code(code: u64) -> State {
        // A match rather than an index into `ALL`: no bounds check on every call.
        match code {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            3 => State::ForcedOpen,
            4 => State::Disabled,
            _ => State::MetricsOnly,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// State (3 bits), half-open permits handed out (16 bits) and generation (45 bits) in one word,
/// so that admission is one atomic load and a half-open permit one compare-and-swap that cannot
/// outlive its period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Word(pub(crate) u64);

const STATE_BITS: u32 = 3;
const ISSUED_BITS: u32 = 16;
const ISSUED_SHIFT: u32 = STATE_BITS;
const GEN_SHIFT: u32 = STATE_BITS + ISSUED_BITS;
/// Half-open permits are counted in 16 bits.
pub(crate) const MAX_PERMITS: u32 = (1 << ISSUED_BITS) - 1;

impl Word {
    pub(crate) fn new(state: State, generation: u64, issued: u32) -> Word {
        Word(state.code() | u64::from(issued) << ISSUED_SHIFT | generation << GEN_SHIFT)
    }

    /// Whether the state records calls as they come (closed or metrics only): the admission
    /// fast path, one mask and compare.
    #[inline]
    pub(crate) fn records(self) -> bool {
        let code = self.0 & ((1 << STATE_BITS) - 1);
        code == State::Closed.code() || code == State::MetricsOnly.code()
    }

    #[inline]
    pub(crate) fn state(self) -> State {
        State::from_code(self.0 & ((1 << STATE_BITS) - 1))
    }

    #[inline]
    pub(crate) fn generation(self) -> u64 {
        self.0 >> GEN_SHIFT
    }

    pub(crate) fn issued(self) -> u32 {
        ((self.0 >> ISSUED_SHIFT) & u64::from(MAX_PERMITS)) as u32
    }

    pub(crate) fn with_issued(self, issued: u32) -> Word {
        Word::new(self.state(), self.generation(), issued)
    }

    /// The first word of the next period.
    pub(crate) fn next(self, state: State) -> Word {
        Word::new(state, self.generation() + 1, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_round_trips() {
        for state in State::ALL {
            for (generation, issued) in [(0, 0), (1, 7), ((1 << 45) - 1, MAX_PERMITS)] {
                let w = Word::new(state, generation, issued);
                assert_eq!(
                    (w.state(), w.generation(), w.issued()),
                    (state, generation, issued)
                );
            }
        }
        let w = Word::new(State::HalfOpen, 9, 2);
        assert_eq!(w.with_issued(3).issued(), 3);
        assert_eq!(w.next(State::Open), Word::new(State::Open, 10, 0));
    }
}
