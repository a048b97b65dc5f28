//! Shared inputs for the criterion benches (deterministic generators), so each
//! bench names and builds its input the same way.
