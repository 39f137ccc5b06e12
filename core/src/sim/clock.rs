//! Virtual time with a livelock guard.

use crate::time::Millis;

/// The simulation's clock: time moves only forward, and every step of a driver loop is counted against a
/// budget so that a loop that never settles fails the test instead of hanging it.
#[derive(Clone, Debug)]
pub struct Clock {
    now: Millis,
    steps: u64,
    max_steps: u64,
}

impl Clock {
    /// A clock at `start` allowing `max_steps` steps.
    pub fn new(start: Millis, max_steps: u64) -> Self {
        Self { now: start, steps: 0, max_steps }
    }

    /// The current virtual time.
    pub fn now(&self) -> Millis {
        self.now
    }

    /// Moves time to `at`; earlier times are ignored (time never goes back).
    pub fn advance_to(&mut self, at: Millis) {
        if at > self.now {
            self.now = at;
        }
    }

    /// Counts one driver step.
    ///
    /// # Panics
    ///
    /// When the step budget is exhausted: the simulation is livelocked (or the test needs a larger
    /// budget), and failing loudly is the point.
    pub fn step(&mut self) {
        self.steps += 1;
        assert!(
            self.steps <= self.max_steps,
            "simulation livelock: more than {} steps (virtual time {:?})",
            self.max_steps,
            self.now
        );
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }
}

/// The earliest of some optional deadlines.
pub fn earliest(deadlines: impl IntoIterator<Item = Option<Millis>>) -> Option<Millis> {
    deadlines.into_iter().flatten().min()
}
